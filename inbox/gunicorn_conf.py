"""gunicorn's settings for `bin/docker-entrypoint web` (its command line gives the rest)."""

# The access log names the client first: the address the inbox resolves through
# INBOX_TRUSTED_PROXIES (inbox.middleware.ClientAddressMiddleware keeps it in the request's
# environ), as sign-in throttling and the audit trail read it, never the X-Forwarded-For header
# as sent, whose left-most entries anyone can write; "-" for a request the inbox never saw (one
# gunicorn refused itself). Then the connection's address (the proxy), then gunicorn's default
# fields.
access_log_format = (
    '%({inbox.client_addr}e)s %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
)
