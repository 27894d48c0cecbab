"""Generated from api/proto/customers.proto by `make proto` (grpc_api.codegen); do not edit."""
