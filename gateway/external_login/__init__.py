"""Sign-in through external OpenID Connect and OAuth2 providers (docs/external-login.md).

flow.py      PURE: the authorization request (state, nonce, PKCE S256) and the callback checks
identity.py  PURE: claims -> ExternalIdentity, allow-lists, amr trust, usernames for new accounts
tokens.py    PURE: ID token verification (joserfc signature, authlib's OIDC claim rules)
client.py    the HTTP adapter: discovery, JWKS, token exchange, userinfo, GitHub's REST API
service.py   drives one sign-in from button to identity; links and creates accounts in the store
"""
