"""projections: read models built from the ledger.

`runner.ProjectionRunner` applies ledger records in seq order, exactly once, to each projection's
tables in their own SQLite file (`db.open_engine`); `registry` lists the projections (`wallets`
first); `cli` adds `agentkeys-broker projections rebuild|status`. Imports only `ledger`. Kept
import-light: the console script imports `projections.cli` at start.
"""
