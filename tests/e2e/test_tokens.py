"""Bearer tokens of an identity provider: RS256 and ES256 verified against its JWKS (a real
HTTP server in the test), keys refreshed on rotation, and every forgery refused with 401;
validly signed tokens whose claims would poison the data (NUL, lone surrogates, empty or huge
values, times that are not numbers or too far ahead) refused with 401 / UNAUTHENTICATED."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from grpc_api.gen import customers_pb2 as pb
from grpc_api.gen import customers_pb2_grpc as rpc
from service.gateway import Gateway
from service.settings import Settings
from tests.e2e.conftest import new_customer, serve_in_thread
from tests.e2e.test_customers_api import assert_problem
from tests.e2e.test_grpc_parity import profile, rpc_error, serve_grpc

LIST = "/api/v1/customers"


class Provider:
    """The identity provider's JWKS endpoint; `keys` can change while it runs."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def publish(self, kid: str, public: Any, algorithm: Any, alg: str) -> None:
        jwk = algorithm.to_jwk(public, as_dict=True)
        self.keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.server.shutdown()


@pytest.fixture(scope="module")
def idp_url(migrated: Settings, provider: Provider) -> Iterator[str]:
    settings = migrated.model_copy(
        update={"jwt_jwks_url": provider.url, "jwt_jwks_refresh_cooldown_seconds": 0.0}
    )
    yield from serve_in_thread(Gateway(settings))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def claims(settings: Settings, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": "idp-user",
        "org": "idp-org",
        "roles": ["analyst"],
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + 300,
        **over,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with `secret` (PyJWT refuses a public key as an HMAC secret,
    which is exactly the algorithm-confusion attack a verifier must refuse too)."""
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def get(url: str, token: str) -> httpx.Response:
    return httpx.get(url + LIST, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_identity_provider_tokens(idp_url: str, provider: Provider, migrated: Settings) -> None:
    provider.publish("rsa-1", RSA_KEY.public_key(), RSAAlgorithm, "RS256")
    provider.publish("ec-1", EC_KEY.public_key(), ECAlgorithm, "ES256")
    c = claims(migrated)
    rs = jwt.encode(c, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(c, EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
    assert get(idp_url, rs).status_code == 200
    assert get(idp_url, es).status_code == 200

    # Rotation: a key published after the last fetch is found by fetching again.
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    provider.publish("rsa-2", rotated.public_key(), RSAAlgorithm, "RS256")
    fetched = provider.fetches
    new = jwt.encode(c, rotated, algorithm="RS256", headers={"kid": "rsa-2"})
    assert get(idp_url, new).status_code == 200
    assert provider.fetches == fetched + 1
    assert get(idp_url, new).status_code == 200 and provider.fetches == fetched + 1  # cached


def test_forgeries_are_401(idp_url: str, provider: Provider, migrated: Settings) -> None:
    if not any(k["kid"] == "rsa-1" for k in provider.keys):
        provider.publish("rsa-1", RSA_KEY.public_key(), RSAAlgorithm, "RS256")
        provider.publish("ec-1", EC_KEY.public_key(), ECAlgorithm, "ES256")
    c = claims(migrated)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(c).encode()).rstrip(b"=").decode()
    good = jwt.encode(c, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    forged = {
        "alg none": f"{header}.{payload}.",
        "HS256 keyed with the public key": hs256_by_hand(c, pem),
        "unknown kid": jwt.encode(c, stranger, algorithm="RS256", headers={"kid": "nope"}),
        "wrong key for kid": jwt.encode(c, stranger, algorithm="RS256", headers={"kid": "rsa-1"}),
        "RS256 claimed for the EC key": jwt.encode(
            c, RSA_KEY, algorithm="RS256", headers={"kid": "ec-1"}
        ),
        "expired": jwt.encode(
            claims(migrated, exp=int(time.time()) - 120),
            RSA_KEY,
            algorithm="RS256",
            headers={"kid": "rsa-1"},
        ),
        "wrong audience": jwt.encode(
            claims(migrated, aud="another-api"),
            RSA_KEY,
            algorithm="RS256",
            headers={"kid": "rsa-1"},
        ),
        "wrong issuer": jwt.encode(
            claims(migrated, iss="evil"), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"}
        ),
        "no exp": jwt.encode(
            {k: v for k, v in c.items() if k != "exp"},
            RSA_KEY,
            algorithm="RS256",
            headers={"kid": "rsa-1"},
        ),
        "tampered payload": good.split(".")[0]
        + "."
        + base64.urlsafe_b64encode(json.dumps({**c, "roles": ["admin"]}).encode())
        .rstrip(b"=")
        .decode()
        + "."
        + good.split(".")[2],
    }
    for case, token in forged.items():
        response = get(idp_url, token)
        assert response.status_code == 401, case
        assert_problem(response, 401)


# --------------------------------------------------------------------------- claims as data


def hs256(settings: Settings, headers: dict[str, Any] | None = None, **over: Any) -> str:
    """A token the service's own secret signs: everything in it is genuinely signed."""
    assert settings.jwt_secret
    return jwt.encode(claims(settings, **over), settings.jwt_secret, "HS256", headers=headers)


def hostile_tokens(settings: Settings) -> dict[str, str]:
    now = int(time.time())
    return {
        "NUL in sub": hs256(settings, sub="evil\x00sub", roles=["support"]),
        "lone surrogate in sub": hs256(settings, sub="evil\ud800", roles=["support"]),
        "empty sub": hs256(settings, sub=""),
        "sub of 300 characters": hs256(settings, sub="s" * 300),
        "NUL in org": hs256(settings, org="acme\x00"),
        "lone surrogate in org": hs256(settings, org="acme\udfff"),
        "org of 5,000 characters": hs256(settings, org="o" * 5000),
        "empty org": hs256(settings, org=""),
        "control character in a role": hs256(settings, roles=["admin\x1b[2J"]),
        "roles not a list": hs256(settings, roles="admin"),
        "exp as a string": hs256(settings, exp=str(now + 300)),
        "exp of 10^20": hs256(settings, exp=10**20),
        "exp a week away": hs256(settings, exp=now + 7 * 86400),
        "exp true": hs256(settings, exp=True),
        "iat an hour ahead": hs256(settings, iat=now + 3600),
        "nbf as a string": hs256(settings, nbf=str(now)),
    }


HOSTILE_MARKS = ("evil", "acme", "ooooo", "ssss", "\\u", "[2J", "9999", "1000000")


def test_signed_but_hostile_claims_are_401(http: httpx.Client, migrated: Settings) -> None:
    """Claims become data (the tenant scopes every row, the subject is every event's actor):
    a validly signed token with NUL, a lone surrogate, an empty or huge value, or times that
    are not numbers or too far ahead, is refused before anything is written, without an
    echo of what it held."""
    before = http.get(LIST, headers={"Authorization": f"Bearer {hs256(migrated)}"})
    assert before.status_code == 200
    for case, token in hostile_tokens(migrated).items():
        h = {"Authorization": f"Bearer {token}"}
        for response in (
            http.post(LIST, json=new_customer(), headers=h),
            http.get(LIST, headers=h),
        ):
            assert response.status_code == 401, (case, response.text)
            assert_problem(response, 401)
            assert not [m for m in HOSTILE_MARKS if m in response.text], (case, response.text)


def test_the_header_is_not_echoed(http: httpx.Client, migrated: Settings) -> None:
    alg = "X" * 5000
    header = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "K" * 1000}).encode())
    token = f"{header}.{b64(json.dumps(claims(migrated)).encode())}.c2ln"
    response = http.get(LIST, headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401)
    assert "XXXX" not in response.text and "KKKK" not in response.text
    assert len(response.content) < 500


@pytest.fixture(scope="module")
def grpc_channel(migrated: Settings) -> Iterator[grpc.Channel]:
    for port in serve_grpc(migrated):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel


def test_hostile_claims_are_unauthenticated_over_grpc(
    grpc_channel: grpc.Channel, migrated: Settings
) -> None:
    """The same tokens as call metadata: UNAUTHENTICATED (never INTERNAL), on reads and
    writes alike."""
    stub = rpc.CustomerServiceStub(grpc_channel)
    good = (("authorization", f"Bearer {hs256(migrated)}"),)
    assert stub.ListCustomers(pb.ListCustomersRequest(), metadata=good).limit == 50
    create = pb.CreateCustomerRequest(customer=profile(new_customer()))
    for case, token in hostile_tokens(migrated).items():
        md = (("authorization", f"Bearer {token}"),)
        for call, request in (
            (stub.ListCustomers, pb.ListCustomersRequest()),
            (stub.CreateCustomer, create),
        ):
            error = rpc_error(call, request, md)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (case, error.details())
            assert not [m for m in HOSTILE_MARKS if m in (error.details() or "")], case
