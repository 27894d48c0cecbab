"""The gRPC API (api/proto/customers.proto): the REST API's use cases, authorization,
masking and errors over gRPC, served by `customers serve grpc`."""
