from __future__ import annotations

import uuid

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path, register_converter

from inbox import accounts, api, forms, login, views, views_reach, views_runs


class AnyCaseUUID:
    """A UUID in either case: an API client may print ids upper case (.NET's Guid, Excel);
    the id is the same."""

    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def to_python(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_url(self, value: uuid.UUID | str) -> str:
        return str(value)


register_converter(AnyCaseUUID, "anyuuid")

app_patterns = (
    [
        path("", views.index, name="index"),
        path("nodes/", views.node_options, name="node_options"),
        path("tabs/", views.tabs, name="tabs"),
        path("forms/next/", views.next_in_list, name="next_in_list"),
        path("forms/<uuid:public_id>/", views.form_page, name="form"),
        path("forms/<uuid:public_id>/decide", views.form_decide, name="form_decide"),
        path("forms/<uuid:public_id>/live", views.form_live, name="form_live"),
        path(
            "forms/<uuid:public_id>/files/<str:input_name>", views.form_upload, name="form_upload"
        ),
        path(
            "forms/<uuid:public_id>/uploads/<uuid:upload_id>/remove",
            views.form_remove_upload,
            name="form_remove_upload",
        ),
        path("forms/<uuid:public_id>/claim", views_reach.form_claim, name="form_claim"),
        path("forms/<uuid:public_id>/release", views_reach.form_release, name="form_release"),
        # Pages behind emailed links: the token is a signed capability, never Dify's.
        path("r/<str:token>/", views_reach.guest_form, name="guest_form"),
        path("r/<str:token>/decide", views_reach.guest_decide, name="guest_decide"),
        path("r/<str:token>/live", views_reach.guest_live, name="guest_live"),
        path("r/<str:token>/renew", views_reach.guest_renew, name="guest_renew"),
        path("r/<str:token>/files/<str:input_name>", views_reach.guest_upload, name="guest_upload"),
        path(
            "r/<str:token>/uploads/<uuid:upload_id>/remove",
            views_reach.guest_remove_upload,
            name="guest_remove_upload",
        ),
        path("dashboard/", views_reach.dashboard, name="dashboard"),
        path("apps/", views_runs.apps_list, name="apps"),
        path("apps/<int:app_id>/start/", views_runs.app_start, name="app_start"),
        path("runs/", views_runs.runs_list, name="runs"),
        path("runs/<uuid:public_id>/", views_runs.run_page, name="run"),
        path("runs/<uuid:public_id>/stop", views_runs.run_stop, name="run_stop"),
        path("runs/<uuid:public_id>/continue", views_runs.run_continue, name="run_continue"),
    ],
    "inbox",
)

# Under /api/ an answer in the API's shape, even when Django refuses a request before any view.
handler400 = "inbox.api.bad_request"
handler500 = "inbox.api.server_error"

urlpatterns = [
    path("", include(app_patterns)),
    path(
        "accounts/login/",
        login.LoginView.as_view(authentication_form=forms.LoginForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        accounts.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        accounts.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("accounts/password_reset/", accounts.PasswordResetView.as_view(), name="password_reset"),
    path(
        "accounts/password_reset/done/",
        accounts.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        accounts.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        accounts.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/v1/forms", api.forms_list, name="api_forms"),
    path("api/v1/forms/<anyuuid:public_id>", api.form_detail, name="api_form"),
    path("api/v1/forms/<anyuuid:public_id>/files", api.form_files, name="api_form_files"),
    path("api/v1/forms/<anyuuid:public_id>/decision", api.form_decision, name="api_form_decision"),
    path("api/v1/runs", api.runs, name="api_runs"),
    path("api/v1/runs/files", api.run_files, name="api_run_files"),
    path("api/v1/runs/<anyuuid:public_id>", api.run_detail, name="api_run"),
    path("api/v1/runs/<anyuuid:public_id>/stop", api.run_stop, name="api_run_stop"),
    path("api/v1/ingest", api.ingest, name="api_ingest"),
    path("api/v1/apps", api.apps_list, name="api_apps"),
    # By name, as every call names an app; a name may hold any character.
    path("api/v1/apps/<path:name>", api.app_detail, name="api_app"),
    # Last of the API's: any other address under it (a mistyped call, an id that is no id).
    re_path(r"^api/(?P<path>.*)$", api.not_found),
    path("healthz", views.healthz, name="healthz"),
    # Browsers ask for it on pages without an icon of their own (the admin's).
    path("favicon.ico", views.favicon, name="favicon"),
    path("admin/", admin.site.urls),
]
