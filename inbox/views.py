from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from inbox.models import Form


@login_required
def index(request: HttpRequest) -> HttpResponse:
    forms = Form.objects.for_user(request.user).filter(status=Form.Status.PENDING)
    return render(request, "inbox/index.html", {"pending_count": forms.count()})


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
