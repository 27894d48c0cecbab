"""customers.v1.CustomerService: the REST customer routes' use cases (write_api.customers,
read_api.customers) over gRPC."""

from __future__ import annotations

import asyncio

import orjson

from domain.access import Permission
from grpc_api.backend import Backend
from grpc_api.calls import Call, rpc
from grpc_api.gen import customers_pb2 as pb
from grpc_api.messages import ID, body, to_json, to_message, validated
from grpc_api.queries import arguments, query_model
from projections.customers import VIEW
from read_api import customers as queries
from service.limits import RouteClass
from write_api.commands import Outcome
from write_api.schemas import CustomerCreate, CustomerUpdate

_Get = query_model("GetCustomer", queries.get_customer)
_List = query_model("ListCustomers", queries.list_customers, queries.customer_filters)


class CustomerService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @rpc(Permission.READ, RouteClass.READS, views=(VIEW,))
    async def GetCustomer(self, request: pb.GetCustomerRequest, call: Call) -> pb.Customer:
        params = validated(_Get, to_json(request))
        doc, _ = await queries.customer(self.backend.pool, call.principal, params.id)
        return to_message(orjson.loads(doc), pb.Customer)

    @rpc(Permission.READ, RouteClass.READS, views=(VIEW,))
    async def ListCustomers(
        self, request: pb.ListCustomersRequest, call: Call
    ) -> pb.ListCustomersResponse:
        params = validated(_List, to_json(request))
        filters = await queries.customer_filters(**arguments(params, queries.customer_filters))
        page = await queries.customer_page(
            self.backend.pool,
            self.backend.cursors,
            self.backend.emails,
            call.principal,
            limit=params.limit,
            cursor=params.cursor,
            sort=params.sort,
            filters=filters,
            q=params.q,
        )
        return to_message(orjson.loads(page), pb.ListCustomersResponse)

    @rpc(Permission.WRITE, RouteClass.WRITES)
    async def CreateCustomer(self, request: pb.CreateCustomerRequest, call: Call) -> pb.Customer:
        key = request.idempotency_key if request.HasField("idempotency_key") else None
        profile = validated(CustomerCreate, body(request, "customer"))
        commands = self.backend.customers
        outcome = await asyncio.to_thread(commands.create, call.principal, profile, key)
        return await _customer(call, outcome)

    @rpc(Permission.WRITE, RouteClass.WRITES)
    async def UpdateCustomer(self, request: pb.UpdateCustomerRequest, call: Call) -> pb.Customer:
        customer_id = validated(ID, request.id, "id")
        profile_and_status = body(request, "customer")
        if request.HasField("status"):
            profile_and_status["status"] = request.status
        update = validated(CustomerUpdate, profile_and_status)
        profile = update.profile()
        expected = request.expected_version if request.HasField("expected_version") else None
        commands = self.backend.customers
        outcome = await asyncio.to_thread(
            commands.update, call.principal, customer_id, profile, update.status, expected
        )
        return await _customer(call, outcome)

    @rpc(Permission.DELETE, RouteClass.WRITES)
    async def DeleteCustomer(
        self, request: pb.DeleteCustomerRequest, call: Call
    ) -> pb.DeleteCustomerResponse:
        customer_id = validated(ID, request.id, "id")
        expected = request.expected_version if request.HasField("expected_version") else None
        commands = self.backend.customers
        outcome = await asyncio.to_thread(commands.delete, call.principal, customer_id, expected)
        await call.answer_token(outcome.consistency_token)
        return pb.DeleteCustomerResponse(version=outcome.version)

    @rpc(Permission.DELETE, RouteClass.WRITES)
    async def RestoreCustomer(self, request: pb.RestoreCustomerRequest, call: Call) -> pb.Customer:
        customer_id = validated(ID, request.id, "id")
        expected = request.expected_version if request.HasField("expected_version") else None
        commands = self.backend.customers
        outcome = await asyncio.to_thread(commands.restore, call.principal, customer_id, expected)
        return await _customer(call, outcome)


async def _customer(call: Call, outcome: Outcome) -> pb.Customer:
    await call.answer_token(outcome.consistency_token)
    assert outcome.body is not None
    return to_message(outcome.body, pb.Customer)
