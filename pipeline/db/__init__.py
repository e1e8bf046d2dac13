"""The Main Database: PostgreSQL schema, migrations, loading, and a throwaway server for tests."""
