"""fsguard: a call guard that FreeSWITCH hands every call to through outbound Event Socket."""

__version__ = "0.1.0"
