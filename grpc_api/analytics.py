"""customers.v1.AnalyticsService: a customer's metrics and insights (read_api.activity)."""

from __future__ import annotations

from domain.access import Permission
from grpc_api.backend import Backend
from grpc_api.calls import Call, rpc
from grpc_api.gen import customers_pb2 as pb
from grpc_api.messages import to_json, to_message, validated
from grpc_api.queries import query_model
from read_api import activity as queries
from service.limits import RouteClass

_Analytics = query_model("GetAnalytics", queries.customer_analytics)
_Insights = query_model("GetInsights", queries.customer_insights)


class AnalyticsService:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @rpc(Permission.READ, RouteClass.READS)
    async def GetAnalytics(
        self, request: pb.GetAnalyticsRequest, call: Call
    ) -> pb.CustomerAnalytics:
        params = validated(_Analytics, to_json(request))
        found = await queries.analytics(self.backend.pool, call.principal, params.id)
        return to_message(found, pb.CustomerAnalytics)

    @rpc(Permission.READ, RouteClass.READS)
    async def GetInsights(self, request: pb.GetInsightsRequest, call: Call) -> pb.CustomerInsights:
        params = validated(_Insights, to_json(request))
        found = await queries.insights(self.backend.pool, call.principal, params.id)
        return to_message(found, pb.CustomerInsights)
