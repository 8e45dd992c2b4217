"""The use cases of the broker, HTTP-free and constructor-injected (design §1; issue 8).

Each use case depends only on the ledger and on ports declared in `ledger/ports.py`; it refuses
with a `Refusal` (`ledger/services/refusals.py`) carrying a typed wire reason, and `api/` maps
reasons to HTTP in one table.
"""
