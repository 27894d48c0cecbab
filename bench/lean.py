"""The lean reference of `python -m bench.serving`: what a minimal service on the same stack
answers on this machine, so the service's figures are reported as ratios to it.

`uvicorn bench.lean:create_app --factory --workers 2` (uvloop + httptools):
- GET /lean/customers/{id}: verify an HS256 bearer token, return one customer's stored JSON
  (customers_docs) from a pooled autocommit connection.
- POST /lean/customers: validate the body with pydantic, seal it under a fresh AES-256-GCM
  data key, wrap the key with a master key, insert the event and the key in one transaction
  (tables of its own, TABLES, made by the bench; no table lock, no followers).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI, Header, HTTPException, Request, Response
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from projections.customers import use_raw_json

TABLES = (
    "CREATE TABLE IF NOT EXISTS lean_events (id uuid PRIMARY KEY, version int NOT NULL,"
    " state bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS lean_keys (id uuid PRIMARY KEY, wrapped bytea NOT NULL)",
)
GET = "SELECT doc FROM customers_docs WHERE id = %s AND org_id = %s"
INSERT_EVENT = "INSERT INTO lean_events (id, version, state) VALUES (%s, 1, %s)"
INSERT_KEY = "INSERT INTO lean_keys (id, wrapped) VALUES (%s, %s)"


class Location(BaseModel):
    country: str = Field(min_length=2, max_length=60)
    city: str | None = Field(default=None, max_length=100)


class Preferences(BaseModel):
    marketingConsent: bool
    dataProcessingConsent: bool


class LeanCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
    name: str = Field(min_length=1, max_length=200)
    age: int | None = Field(default=None, ge=0, le=150)
    location: Location
    preferences: Preferences


async def raw_json(conn: Any) -> None:
    use_raw_json(conn)  # jsonb as its bytes, answered untouched


def create_app() -> FastAPI:
    secret = os.environ["CUSTOMERS_JWT_SECRET"]
    audience = os.environ.get("CUSTOMERS_JWT_AUDIENCE", "customers-api")
    issuer = os.environ.get("CUSTOMERS_JWT_ISSUER", "customers-service")
    master = AESGCM(base64.b64decode(os.environ["CUSTOMERS_MASTER_KEY"]))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            os.environ["DATABASE_URL"],
            min_size=4,
            max_size=8,
            kwargs={"autocommit": True},
            configure=raw_json,
            open=False,
        )
        await pool.open()
        app.state.pool = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    def org_of(authorization: str | None) -> str:
        try:
            claims = jwt.decode(
                (authorization or "").removeprefix("Bearer "),
                secret,
                algorithms=["HS256"],
                audience=audience,
                issuer=issuer,
            )
        except jwt.PyJWTError:
            raise HTTPException(401) from None
        return str(claims["org"])

    @app.get("/lean/customers/{customer_id}")
    async def get(
        customer_id: uuid.UUID, request: Request, authorization: str | None = Header(None)
    ) -> Response:
        org = org_of(authorization)
        pool: AsyncConnectionPool[Any] = request.app.state.pool
        async with pool.connection() as conn:
            row = await (await conn.execute(GET, (customer_id, org), prepare=True)).fetchone()
        if row is None:
            raise HTTPException(404)
        return Response(bytes(row[0]), media_type="application/json")

    @app.post("/lean/customers", status_code=201)
    async def create(
        body: LeanCreate, request: Request, authorization: str | None = Header(None)
    ) -> Response:
        org_of(authorization)
        customer_id = uuid.uuid4()
        key = AESGCM.generate_key(256)
        nonce, key_nonce = os.urandom(12), os.urandom(12)
        document = orjson.dumps({"id": str(customer_id), **body.model_dump()})
        state = nonce + AESGCM(key).encrypt(nonce, document, customer_id.bytes)
        wrapped = key_nonce + master.encrypt(key_nonce, key, customer_id.bytes)
        pool: AsyncConnectionPool[Any] = request.app.state.pool
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(INSERT_EVENT, (customer_id, state), prepare=True)
            await conn.execute(INSERT_KEY, (customer_id, wrapped), prepare=True)
        return Response(document, status_code=201, media_type="application/json")

    return app
