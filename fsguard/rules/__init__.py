"""The rules of each area, apart from the channel and the database: lists and counters, customers and the CRM,
recordings, the routing table, the outbound freeze, STIR/SHAKEN, numbers."""
