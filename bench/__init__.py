"""`python -m bench`: KMS and auth speed ratios, all measured in one run against real server processes.

Modules: ``env`` (database, Redis prefix, CLI), ``load`` (the multi-process grpc.aio load generator),
``measure`` (each measurement), ``report`` (table and JSON), ``cli`` (the entry point).
"""
