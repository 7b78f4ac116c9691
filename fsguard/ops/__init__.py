"""What operators use: the fsguard command, the HTTP API and console, the lab, replay."""
