"""The running daemon: the application, the outbound Event Socket server, metrics, logs, systemd."""
