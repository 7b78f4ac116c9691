"""The Event Socket: what fsguard says to FreeSWITCH, on a call's socket and on the inbound one."""
