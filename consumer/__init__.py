"""paynorm: exactly-once landing of a PostgreSQL payment lake, normalized by dbt."""

__version__ = "0.1.0"
