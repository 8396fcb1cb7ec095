"""Schema migrations (alembic), run by `lanchat db upgrade` and on `lanchat serve` start."""
