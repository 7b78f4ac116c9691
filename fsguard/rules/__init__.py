"""The rules of each area, apart from the channel: what fsguard decides and keeps, one module a rule.

lists (entries, levels, prefixes, import/export) and counters (flood and nuisance counts);
customers (the table) and crm (the CRM client, its cache and breaker); routing (the rule language
and table), hours and regions; freeze (outbound); stirshaken; recordings, review and spotting;
erasure; numbers and spreadsheet (reading numbers, writing CSV safely); checks (the settings
checks that need a rule, run wherever the settings are loaded).
"""
