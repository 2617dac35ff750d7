"""Amazon's Redshift Python driver (PyPI redshift_connector) against Sluice.

usage: redshift_connector_check.py MODE HOST PORT DATABASE [ARGS…]
  password USER PASSWORD     a password user (the driver's default sign-in)
  idptoken TOKEN             IdpTokenAuthPlugin with an access token (idp_type AwsIdc)
  azure TOKEN PROVIDER       BasicJwtCredentialsProvider carrying an Azure AD token
                             (idp_type AzureAD, provider_name PROVIDER)
  forward USER PASSWORD      a forwarding session: queries reach the upstream

TLS is verified (sslmode verify-full) against the CA in SSL_CERT_FILE. Prints one
line `IDENTITY <json>` with what the session says about itself, checks the
metadata calls (lake sessions), and ends with ALL OK. A refused sign-in prints
`REFUSED <message>` and exits with status 3.
"""

import json
import sys

import redshift_connector


def check(label, got, want):
    if got != want:
        print(f"FAIL {label}: got {got!r}, want {want!r}")
        sys.exit(1)
    print(f"ok {label}")


def connect(mode, host, port, database, args):
    common = dict(host=host, port=int(port), database=database, sslmode="verify-full")
    if mode in ("password", "forward"):
        return redshift_connector.connect(user=args[0], password=args[1], **common)
    if mode == "idptoken":
        return redshift_connector.connect(
            credentials_provider="IdpTokenAuthPlugin",
            token=args[0],
            token_type="ACCESS_TOKEN",
            **common,
        )
    if mode == "azure":
        return redshift_connector.connect(
            credentials_provider="BasicJwtCredentialsProvider",
            web_identity_token=args[0],
            provider_name=args[1],
            **common,
        )
    raise SystemExit(f"unknown mode {mode}")


def lake_checks(conn):
    cur = conn.cursor()
    # Not autocommit: the driver opens a transaction itself ("begin transaction").
    cur.execute("SELECT count(*) FROM nyc.zones")
    check("count", cur.fetchone()[0], 265)
    cur.execute("SELECT zone FROM nyc.zones WHERE location_id = %s", (12,))
    check("parameter", cur.fetchone()[0], "Manhattan Zone 12")
    cur.execute("SELECT CAST(2.5 AS DOUBLE PRECISION), CAST(7 AS BIGINT), true, 'x'")
    check("types", list(cur.fetchone()), [2.5, 7, True, "x"])
    conn.commit()

    schemas = [row[0] for row in cur.get_schemas()]
    check("get_schemas has nyc", "nyc" in schemas, True)
    # The listing is filtered by the role: the caller compares it per identity.
    tables = sorted(row[2] for row in cur.get_tables(schema_pattern="nyc"))
    print("TABLES " + json.dumps(tables))
    check("get_tables has zones", "zones" in tables, True)
    columns = [(row[3], row[5]) for row in cur.get_columns(schema_pattern="nyc", tablename_pattern="zones")]
    check(
        "get_columns",
        columns,
        [("location_id", "int8"), ("borough", "varchar"), ("zone", "varchar"), ("service_zone", "varchar")],
    )
    check("get_primary_keys", list(cur.get_primary_keys(schema="nyc", table="zones")), [])


def main(mode, host, port, database, *args):
    try:
        conn = connect(mode, host, port, database, list(args))
    except Exception as e:  # the driver raises its own error types with the server's text
        print(f"REFUSED {e}")
        sys.exit(3)
    statuses = {k.decode(): v.decode() for k, v in conn.parameter_statuses}
    check("server_version is Redshift's", statuses.get("server_version"), "8.0.2")
    check("no extended row descriptions", "server_protocol_version" in statuses, False)
    cur = conn.cursor()
    cur.execute("SELECT current_user")
    user = cur.fetchone()[0]
    conn.commit()
    identity = None
    if mode != "forward":
        cur.execute("SHOW sluice.identity")
        identity = list(cur.fetchone())
        conn.commit()
    print("IDENTITY " + json.dumps({"current_user": user, "identity": identity}))
    if mode == "forward":
        # Forwarded: the upstream names its own server version and the minted user.
        cur.execute("SELECT sum(amount) FROM public.sales WHERE region = %s", ("east",))
        check("forwarded query", float(cur.fetchone()[0]), 375750.0)
        conn.commit()
        schemas = [row[0] for row in cur.get_schemas()]
        check("forwarded get_schemas has public", "public" in schemas, True)
        keys = [(row[2], row[3]) for row in cur.get_primary_keys(schema="public", table="sales")]
        check("forwarded get_primary_keys", keys, [("sales", "id")])
    else:
        lake_checks(conn)
    conn.close()
    print("ALL OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
