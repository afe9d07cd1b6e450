"""The audit trail: a hash-chained record of who was told what and when, kept in SQL."""
