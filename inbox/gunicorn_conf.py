"""gunicorn's settings for `bin/docker-entrypoint web` (its command line gives the rest)."""

from inbox.env import env_int

# Who may say the visitor came over HTTPS (X-Forwarded-Proto, and gunicorn's other secure-scheme
# headers): every connection behind INBOX_TRUSTED_PROXIES reverse proxies (the web port is
# reached through them only, as for X-Forwarded-For, see compose.yaml), no one without (a visitor
# reaching gunicorn directly could write it). Django reads the header under the same setting
# (SECURE_PROXY_SSL_HEADER in inbox/settings.py). A bad value stops start-up with its name.
forwarded_allow_ips = "*" if env_int("INBOX_TRUSTED_PROXIES", 0, minimum=0) else ""

# The access log names the client first: the address the inbox resolves through
# INBOX_TRUSTED_PROXIES (inbox.middleware.ClientAddressMiddleware keeps it in the request's
# environ), as sign-in throttling and the audit trail read it, never the X-Forwarded-For header
# as sent, whose left-most entries anyone can write; "-" for a request the inbox never saw (one
# gunicorn refused itself). Then the connection's address (the proxy), then gunicorn's default
# fields.
access_log_format = (
    '%({inbox.client_addr}e)s %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
)
