"""customers.v1.SegmentService: the REST segment routes' use cases (write_api.segments,
read_api.segments) over gRPC."""

from __future__ import annotations

import asyncio

import orjson

from domain.access import Permission
from grpc_api.backend import Backend
from grpc_api.calls import Call, rpc
from grpc_api.gen import customers_pb2 as pb
from grpc_api.messages import ID, body, to_json, to_message, validated
from grpc_api.queries import query_model
from projections.membership import VIEW as MEMBERSHIP
from projections.segments import VIEW
from read_api import segments as queries
from service.limits import RouteClass
from write_api.schemas import SegmentCreate

_Get = query_model("GetSegment", queries.get_segment)
_List = query_model("ListSegments", queries.list_segments)
_Members = query_model("ListSegmentMembers", queries.segment_customers)
_VIEWS = (VIEW, MEMBERSHIP)  # as the REST segment router waits for


class SegmentService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @rpc(Permission.READ, RouteClass.READS, views=_VIEWS)
    async def GetSegment(self, request: pb.GetSegmentRequest, call: Call) -> pb.Segment:
        params = validated(_Get, to_json(request))
        found = await queries.segment(self.backend.pool, call.principal, params.segment_id)
        return to_message(found, pb.Segment)

    @rpc(Permission.READ, RouteClass.READS, views=_VIEWS)
    async def ListSegments(
        self, request: pb.ListSegmentsRequest, call: Call
    ) -> pb.ListSegmentsResponse:
        params = validated(_List, to_json(request))
        page = await queries.segment_page(
            self.backend.pool,
            call.principal,
            limit=params.limit,
            cursor=params.cursor,
            status=params.status,
        )
        return to_message(page, pb.ListSegmentsResponse)

    @rpc(Permission.SEGMENTS, RouteClass.WRITES)
    async def CreateSegment(self, request: pb.CreateSegmentRequest, call: Call) -> pb.Segment:
        definition = validated(SegmentCreate, body(request, "segment"))
        commands = self.backend.segments
        outcome = await asyncio.to_thread(commands.create, call.principal, definition)
        await call.answer_token(outcome.consistency_token)
        assert outcome.body is not None
        return to_message(outcome.body, pb.Segment)

    @rpc(Permission.SEGMENTS, RouteClass.WRITES)
    async def CalculateSegment(
        self, request: pb.CalculateSegmentRequest, call: Call
    ) -> pb.CalculationJob:
        segment_id = validated(ID, request.segment_id, "segmentId")
        commands = self.backend.segments
        job = await asyncio.to_thread(commands.calculate, call.principal, segment_id)
        return to_message(job, pb.CalculationJob)

    @rpc(Permission.READ, RouteClass.READS, views=_VIEWS)
    async def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, call: Call
    ) -> pb.ListSegmentMembersResponse:
        params = validated(_Members, to_json(request))
        page = await queries.member_page(
            self.backend.pool,
            call.principal,
            params.segment_id,
            limit=params.limit,
            cursor=params.cursor,
            as_of=params.as_of,
        )
        return to_message(orjson.loads(page), pb.ListSegmentMembersResponse)
