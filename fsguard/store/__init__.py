"""Storage: the database, its models and migrations, the group-commit writer, call records, the audit trail."""
