"""authgate as an OpenID Provider (docs/oidc-provider.md).

Pure modules: clients (the configured relying parties and the rules their URLs follow),
protocol (authorization requests, PKCE, scopes, claims, consent), keys (signing keys and
JWKS over joserfc), tokens (ID and access tokens over joserfc). service.py holds the
provider's state machine over the store; the HTTP layer is gateway/oidc/endpoints.py
and portal/views/oidc.py.
"""
