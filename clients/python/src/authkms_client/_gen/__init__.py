"""Generated protobuf/gRPC code. Do not edit: run `python -m api.generate`."""
