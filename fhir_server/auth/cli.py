"""`diatabase clients add | list | revoke | keygen | token`: Backend Services clients.

    diatabase clients keygen etl                 # etl.private.jwk (owner-only) + etl.jwks.json
    diatabase clients add etl --jwks etl.jwks.json --scope "system/Observation.crus"
    diatabase clients token CLIENT_ID --key etl.private.jwk --server http://127.0.0.1:8080

`add` prints the new client id alone on its last line; `token` (for development and
scripts) signs a client assertion, calls the server's token endpoint and prints the access
token alone on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from fhir_server.settings import DEFAULT_DB, Settings

ALGS = ("RS384", "ES384", "RS256", "ES256")


def _store(args: argparse.Namespace):
    from fhir_server.auth.store import AuthStore, store_path

    settings = Settings.from_env(db_url=args.db, auth_store=args.store)
    return AuthStore(store_path(settings))


def cmd_add(args: argparse.Namespace) -> int:
    jwks = None
    if args.jwks:
        try:
            jwks = json.loads(Path(args.jwks).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"diatabase: cannot read the JWKS {args.jwks}: {exc}") from None
        from fhir_server.auth.jwks import JwksError, parse_jwks

        try:
            if not parse_jwks(json.dumps(jwks)):
                raise JwksError("no RSA or EC signing key in it")
        except JwksError as exc:
            raise SystemExit(f"diatabase: {args.jwks}: {exc}") from None
        if any("d" in key for key in jwks.get("keys", [jwks])):
            raise SystemExit(f"diatabase: {args.jwks} holds a PRIVATE key: register the "
                             "public JWKS only")
    try:
        client = _store(args).add_client(args.name, args.scope, jwks, args.jwks_url)
    except ValueError as exc:
        raise SystemExit(f"diatabase: {exc}") from None
    print(f"Registered client {client.name!r} with scopes: {client.scope}")
    print(client.id)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    clients = _store(args).clients()
    if not clients:
        print("No clients registered")
        return 0
    for client in clients:
        state = "revoked" if client.revoked else "active"
        when = time.strftime("%Y-%m-%d", time.gmtime(client.created))
        keys = client.jwks_url or "JWKS registered"
        print(f"{client.id}  {client.name}  {state}  {when}  {keys}  {client.scope}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke(args.client_id):
        raise SystemExit(f"diatabase: no active client {args.client_id}")
    print(f"Revoked {args.client_id}: its assertions are refused from now on (tokens it "
          "already holds expire within their lifetime)")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from joserfc.jwk import ECKey, RSAKey

    if args.alg.startswith("RS"):
        key = RSAKey.generate_key(2048, private=True, auto_kid=True)
    else:
        key = ECKey.generate_key("P-384" if args.alg == "ES384" else "P-256", private=True,
                                 auto_kid=True)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / f"{args.name}.private.jwk"
    public = folder / f"{args.name}.jwks.json"
    fd = os.open(private, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({**key.as_dict(private=True), "alg": args.alg}, out)
    public_key = {**key.as_dict(private=False), "alg": args.alg, "use": "sig"}
    public.write_text(json.dumps({"keys": [public_key]}, indent=2), encoding="utf-8")
    print(f"Private key (keep it secret, owner-only): {private}")
    print(f"Public JWKS (register it: diatabase clients add {args.name} --jwks {public} "
          f"--scope ...): {public}")
    return 0


def client_assertion(client_id: str, key_file: Path, token_url: str) -> str:
    """A signed client assertion (RFC 7523) for `client_id` to `token_url`."""
    from joserfc import jwt
    from joserfc.jwk import ECKey, RSAKey

    data = json.loads(key_file.read_text(encoding="utf-8"))
    key = (RSAKey if data.get("kty") == "RSA" else ECKey).import_key(data)
    alg = data.get("alg") or ("RS384" if data.get("kty") == "RSA" else "ES384")
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
              "exp": now + 240, "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": alg, "typ": "JWT", "kid": key.kid}, claims, key, algorithms=[alg])


def cmd_token(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    server = args.server.rstrip("/")
    token_url = f"{server}/auth/token"
    assertion = client_assertion(args.client_id, Path(args.key), token_url)
    registered = None if args.scope else _registered(args)
    scope = args.scope or (registered.scope if registered is not None else "")
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }).encode()
    request = urllib.request.Request(
        token_url, data=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        raise SystemExit(f"diatabase: the token endpoint refused: {exc.code} {detail}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"diatabase: cannot reach {token_url}: {exc.reason}") from None
    print(f"Scopes granted: {body.get('scope')} (expires in {body.get('expires_in')} s)",
          file=sys.stderr)
    print(body["access_token"])
    return 0


def _registered(args: argparse.Namespace):
    """The client as registered, when its auth store is on this machine (else None)."""
    from fhir_server.auth.store import store_path

    settings = Settings.from_env(db_url=args.db, auth_store=args.store)
    if not store_path(settings).exists():
        return None
    return _store(args).client(args.client_id)


def add_commands(sub: argparse._SubParsersAction) -> None:
    clients = sub.add_parser("clients", help="SMART Backend Services clients of the built-in "
                             "token endpoint")
    commands = clients.add_subparsers(dest="clients_command", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--db", default=None, help=f"database URL (default {DEFAULT_DB}); "
                            "the auth store lies beside a SQLite database")
        parser.add_argument("--store", default=None,
                            help="the auth store file (default: DIATABASE_AUTH_STORE, else "
                            "beside the database)")

    add = commands.add_parser("add", help="register a client; prints its id on the last line")
    add.add_argument("name")
    keys = add.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", help="the client's PUBLIC JWKS file")
    keys.add_argument("--jwks-url", help="the URL where the client publishes its JWKS")
    add.add_argument("--scope", required=True,
                     help='allowed scopes, e.g. "system/Observation.crus system/Patient.rs"')
    common(add)
    add.set_defaults(func=cmd_add)

    listing = commands.add_parser("list", help="the registered clients")
    common(listing)
    listing.set_defaults(func=cmd_list)

    revoke = commands.add_parser("revoke", help="refuse a client's assertions from now on")
    revoke.add_argument("client_id")
    common(revoke)
    revoke.set_defaults(func=cmd_revoke)

    keygen = commands.add_parser("keygen", help="make a client key pair (development)")
    keygen.add_argument("name")
    keygen.add_argument("--alg", choices=ALGS, default="RS384")
    keygen.add_argument("--out", default=".", help="folder to write the two files in")
    keygen.set_defaults(func=cmd_keygen)

    token = commands.add_parser("token", help="get an access token as a client (development): "
                                "prints it on the last line")
    token.add_argument("client_id")
    token.add_argument("--key", required=True, help="the client's private JWK file")
    token.add_argument("--server", default="http://127.0.0.1:8080", help="the server's base URL")
    token.add_argument("--scope", default=None,
                       help="scopes to ask for (default: all the client is allowed)")
    common(token)
    token.set_defaults(func=cmd_token)
