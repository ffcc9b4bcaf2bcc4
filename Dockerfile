# Production image: one image for every process (web, worker, mailer, beat, follower), with the
# runtime dependencies only (requirements.prod.lock: the pins of requirements.lock without the
# test and lint tools).
#   docker build -t dify-approval-inbox .
#   docker run --env-file .env dify-approval-inbox web|worker|mailer|beat|follower|migrate
# (.env names the shared DATABASE_URL and CELERY_BROKER_URL: without them these refuse to start,
# unless INBOX_EMBEDDED=1.)
# (.dockerignore keeps .env, .git, .venv and var/ out of the image.)
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY requirements.prod.lock ./
RUN pip install uv && uv pip install --system -r requirements.prod.lock

COPY . .
# Static files are collected at build time and served by WhiteNoise.
RUN DATABASE_URL=postgres://build@localhost/build SECRET_KEY=build-only-not-used-at-run-time \
    INBOX_ENCRYPTION_KEYS=YnVpbGQtb25seS1rZXktbm90LXVzZWQtYXQtcnVudGk= \
    python manage.py collectstatic --no-input -v 0

RUN useradd --system --uid 10001 --home-dir /app inbox && mkdir -p /app/var && chown inbox /app/var
USER inbox
EXPOSE 8000
# The web process's check (the port it listens on, PORT); the other processes serve no HTTP, so
# their containers replace it (compose.yaml: a ping for worker and mailer, the schedule file's
# age for beat, none for the follower) or pass --no-healthcheck to docker run. Beat and the
# workers are also watched from web: `/healthz` says `degraded` once no periodic task has run
# for 5 minutes.
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import os,urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000')).status == 200 else 1)" || exit 1
ENTRYPOINT ["bin/docker-entrypoint"]
CMD ["web"]
