from __future__ import annotations

from typing import Any

import pytest

from inbox.forms import DecisionForm, input_specs, inputs_from_dify
from inbox.models import DifyApp, Form, Upload
from tests.review.conftest import full_definition, make_form

pytestmark = pytest.mark.smoke


def upload(
    form: Form, input_name: str, name: str = "receipt.pdf", category: str = "document"
) -> Upload:
    return Upload.objects.create(
        form=form,
        input_name=input_name,
        upload_file_id=f"dify-{name}",
        name=name,
        size=1234,
        mime_type="application/pdf",
        category=category,
    )


def decision_form(form: Form, data: Any = None, **kwargs: Any) -> DecisionForm:
    """The form's decision with the form's uploads at hand (whose they are is the views' part:
    tests/review/test_api.py, tests/review/test_uploads.py)."""
    return DecisionForm(form, data, uploads=Upload.objects.filter(form=form), **kwargs)


def api_data(form: Form, **inputs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "in_note": "ok",
        "in_decision": "refund",
        "in_receipt": [str(upload(form, "receipt").public_id)],
        "in_evidence": [],
    }
    values.update({f"in_{k}": v for k, v in inputs.items()})
    return {"action": "approve", **{k: v for k, v in values.items() if v is not None}}


def test_paragraph_prefill_prefers_resolved_value_then_constant_default() -> None:
    definition = full_definition()
    assert input_specs(definition)[0].default == "resolved default"
    definition["resolved_default_values"] = {}
    assert input_specs(definition)[0].default == "constant default"
    definition["inputs"][0]["default"] = {"type": "variable", "selector": ["a", "b"], "value": ""}
    assert input_specs(definition)[0].default == ""


def test_a_valid_decision_becomes_dify_inputs_with_every_key(form: Form) -> None:
    data = api_data(form, evidence=["https://example.com/plan.dwg", "https://example.com/a.png"])
    dform = decision_form(form, data, require_every_key=True)
    assert dform.is_valid(), dform.errors
    receipt = Upload.objects.get(form=form, input_name="receipt")
    assert dform.dify_inputs() == {
        "note": "ok",
        "decision": "refund",
        "receipt": {
            "transfer_method": "local_file",
            "upload_file_id": receipt.upload_file_id,
            "type": "document",
        },
        "evidence": [
            {
                "transfer_method": "remote_url",
                "url": "https://example.com/plan.dwg",
                "type": "custom",
            },
            {"transfer_method": "remote_url", "url": "https://example.com/a.png", "type": "image"},
        ],
    }


def test_every_input_key_must_be_present_through_the_api(form: Form) -> None:
    data = api_data(form, note=None)
    dform = decision_form(form, data, require_every_key=True)
    assert not dform.is_valid()
    assert dform.error_list() == ["Missing required inputs: note."]


def test_select_value_must_be_one_of_the_constant_options(form: Form) -> None:
    dform = decision_form(form, api_data(form, decision="maybe"))
    assert not dform.is_valid()
    assert dform.error_list() == ["decision: “maybe” is not one of the options."]


def test_an_unchosen_select_says_so(form: Form) -> None:
    dform = decision_form(form, api_data(form, decision=""))
    assert not dform.is_valid()
    assert dform.error_list() == ["decision: Choose an option."]


def test_an_unknown_action_is_refused(form: Form) -> None:
    data = api_data(form)
    data["action"] = "delete_everything"
    dform = decision_form(form, data)
    assert not dform.is_valid()
    assert dform.error_list() == ["“delete_everything” is not an action of this form."]


def test_a_single_file_input_needs_exactly_one_file(form: Form) -> None:
    dform = decision_form(form, api_data(form, receipt=[]))
    assert not dform.is_valid()
    assert dform.error_list() == ["receipt: Add a file."]
    two = [str(upload(form, "receipt", "a.pdf").public_id), "https://example.com/b.pdf"]
    dform = decision_form(form, api_data(form, receipt=two))
    assert not dform.is_valid()
    assert dform.error_list() == ["receipt: Only one file can be attached here."]


def test_file_list_respects_number_limits(form: Form) -> None:
    urls = [f"https://example.com/{i}.png" for i in range(4)]
    dform = decision_form(form, api_data(form, evidence=urls))
    assert not dform.is_valid()
    assert dform.error_list() == ["evidence: At most 3 files can be attached here."]


def test_file_list_without_a_limit_takes_more_than_the_page_shows(dify_app: DifyApp) -> None:
    definition = full_definition()
    definition["inputs"][3]["number_limits"] = 0
    form = make_form(dify_app, definition=definition)
    urls = [f"https://example.com/{i}.png" for i in range(12)]
    dform = decision_form(form, api_data(form, evidence=urls))
    assert dform.is_valid(), dform.errors
    assert len(dform.dify_inputs()["evidence"]) == 12


def test_file_types_follow_the_category_table_and_custom_extensions(form: Form) -> None:
    dform = decision_form(form, api_data(form, evidence=["https://example.com/song.mp3"]))
    assert not dform.is_valid()
    assert dform.error_list() == [
        "evidence: song.mp3: this kind of file is not accepted here. Accepted: "
        "images (GIF, JPEG, JPG, PNG, SVG, WEBP), .dwg."
    ]


def test_transfer_methods_are_enforced(dify_app: DifyApp) -> None:
    definition = full_definition()
    definition["inputs"][2]["allowed_file_upload_methods"] = ["local_file"]
    form = make_form(dify_app, definition=definition)
    dform = decision_form(form, api_data(form, receipt=["https://example.com/r.pdf"]))
    assert not dform.is_valid()
    assert dform.error_list() == [
        "receipt: Web addresses are not accepted here; upload the file instead."
    ]


def test_an_upload_of_another_form_is_not_accepted(dify_app: DifyApp, form: Form) -> None:
    other = make_form(dify_app)
    foreign = upload(other, "receipt")
    dform = decision_form(form, api_data(form, receipt=[str(foreign.public_id)]))
    assert not dform.is_valid()
    assert dform.error_list() == [
        "receipt: This upload is not part of this form; upload the file again."
    ]


def test_web_addresses_given_one_per_line_are_one_file_each_and_count_against_the_limit(
    form: Form,
) -> None:
    # The page's box for a file list's addresses: one value, a line each.
    two = "https://files.example.com/a.png\r\nhttps://files.example.com/b.png\n"
    dform = decision_form(form, api_data(form, evidence=[two]))
    assert dform.is_valid(), dform.errors
    assert [ref.url for ref in dform.cleaned_data["in_evidence"]] == [
        "https://files.example.com/a.png",
        "https://files.example.com/b.png",
    ]
    four = "\n".join(f"https://files.example.com/{n}.png" for n in range(4))
    dform = decision_form(form, api_data(form, evidence=[four]))
    assert not dform.is_valid()
    assert dform.error_list() == ["evidence: At most 3 files can be attached here."]


@pytest.mark.parametrize("typed", ["ftp://example.com/a.pdf", "www.example.com/a.pdf", "a.pdf"])
def test_a_web_address_typed_wrong_is_told_so(form: Form, typed: str) -> None:
    dform = decision_form(form, api_data(form, receipt=[typed]))
    assert not dform.is_valid()
    assert dform.error_list() == [
        "receipt: Enter a full web address starting with http:// or https://."
    ]


def test_a_rejected_decision_refills_the_page(form: Form) -> None:
    receipt = upload(form, "receipt")
    values = inputs_from_dify(
        form,
        {
            "note": "kept",
            "decision": "deny",
            "receipt": {
                "transfer_method": "local_file",
                "upload_file_id": receipt.upload_file_id,
                "type": "document",
            },
            "evidence": [
                {
                    "transfer_method": "remote_url",
                    "url": "https://example.com/x.png",
                    "type": "image",
                }
            ],
        },
    )
    assert values == {
        "note": "kept",
        "decision": "deny",
        "receipt": [str(receipt.public_id)],
        "evidence": ["https://example.com/x.png"],
    }


def test_an_input_named_action_does_not_collide_with_the_action(dify_app: DifyApp) -> None:
    definition = full_definition(
        inputs=[{"type": "paragraph", "output_variable_name": "action", "default": None}]
    )
    form = make_form(dify_app, definition=definition)
    dform = decision_form(form, {"action": "approve", "in_action": "text"}, require_every_key=True)
    assert dform.is_valid(), dform.errors
    assert dform.dify_inputs() == {"action": "text"}


def test_a_page_s_paragraph_lines_reach_dify_ended_as_with_script(form: Form) -> None:
    # A browser without script posts a textarea's lines ended by CRLF; with script (and on
    # Dify's own page) they end with "\n". The workflow gets the same text either way.
    data = api_data(form, note="Line one\r\nLine two\r\n")
    dform = decision_form(form, data, from_page=True)
    assert dform.is_valid(), dform.errors
    assert dform.dify_inputs()["note"] == "Line one\nLine two\n"
    # The JSON API's text is sent exactly as given.
    dform = decision_form(form, data, require_every_key=True)
    assert dform.is_valid(), dform.errors
    assert dform.dify_inputs()["note"] == "Line one\r\nLine two\r\n"


def test_a_listed_extension_no_file_can_be_accepted_under_is_not_offered() -> None:
    from inbox.forms import input_specs

    definition = full_definition()
    definition["inputs"] = [
        {
            "type": "file",
            "output_variable_name": "attachment",
            "allowed_file_types": ["custom"],
            # ".md" is a document to Dify (refused where only custom files are); a file's
            # extension is its last part, so ".tar.gz" never matches; Dify compares the entry as
            # written with a file's extension in lower case, so neither do "LOG2" nor ".DXF".
            "allowed_file_extensions": [".md", ".msg", ".tar.gz", "LOG2", ".DXF", ".log2"],
            "allowed_file_upload_methods": ["local_file"],
        }
    ]
    [spec] = input_specs(definition)
    assert spec.custom_extensions == (".msg", ".log2")
    # Those no file is ever accepted under are the workflow's mistakes, told its author: ".md"
    # too, a document to Dify, which this input does not take.
    assert spec.unmatchable_extensions == (".md", ".tar.gz", "LOG2", ".DXF")
    assert not spec.accepts_no_file
    assert spec.accepted_label() == ".msg, .log2"
    assert spec.accept == ".msg,.log2"
    assert spec.file_type("notes.md") is None and spec.file_type("mail.msg") == "custom"


def test_a_listed_type_of_a_kind_the_input_takes_is_not_named_and_one_with_none_offers_nothing() -> (
    None
):
    from inbox.forms import input_specs

    def spec_of(types: list[str], extensions: list[str]) -> Any:
        definition = full_definition()
        definition["inputs"] = [
            {
                "type": "file-list",
                "output_variable_name": "drawings",
                "allowed_file_types": types,
                "allowed_file_extensions": extensions,
                "allowed_file_upload_methods": ["local_file", "remote_url"],
                "number_limits": 3,
            }
        ]
        return input_specs(definition)[0]

    # Custom files only: a PDF is a document to Dify, refused here, so ".pdf" is named with
    # ".DXF"; nothing is left, so the input takes no file at all.
    spec = spec_of(["custom"], [".pdf", ".DXF", ".PNG"])
    assert spec.unmatchable_extensions == (".pdf", ".DXF", ".PNG")
    assert spec.custom_extensions == () and spec.accept == ""
    assert spec.accepts_no_file
    # With documents allowed, a PDF is taken as one: ".pdf" is no mistake (".PNG" still is).
    spec = spec_of(["document", "custom"], [".pdf", ".PNG"])
    assert spec.unmatchable_extensions == (".PNG",)
    assert not spec.accepts_no_file and ".pdf" in spec.accept.split(",")
    # "..dwg" is no extension Dify stores; ".dwg" is.
    spec = spec_of(["custom"], ["..dwg", ".dwg"])
    assert spec.unmatchable_extensions == ("..dwg",) and spec.custom_extensions == (".dwg",)


def test_the_record_keeps_the_answers_the_content_had_no_place_for(dify_app: DifyApp) -> None:
    from inbox.forms import answered_content
    from inbox.models import Decision

    definition = full_definition()
    definition["form_content"] = "Approve the refund? {{#$output.note#}}"
    definition["inputs"] = [
        {"type": "paragraph", "output_variable_name": "note", "default": None},
        {"type": "paragraph", "output_variable_name": "internal_reason", "default": None},
        {"type": "paragraph", "output_variable_name": "left_empty", "default": None},
    ]
    form = make_form(dify_app, definition=definition, status=Form.Status.SUBMITTED)
    decision = Decision.objects.create(
        form=form,
        action_id="approve",
        status=Decision.Status.DELIVERED,
        inputs={"note": "Yes.", "internal_reason": "Lost parcel", "left_empty": ""},
    )
    record = answered_content(form, decision)
    assert record == "Approve the refund? Yes.\n\n**Internal reason**: Lost parcel"
    # Dify's own record (it fills placeholders only) is followed by them too.
    Form.objects.filter(pk=form.pk).update(rendered_content="Approve the refund? Yes.")
    form.refresh_from_db()
    assert answered_content(form, decision).endswith("\n\n**Internal reason**: Lost parcel")


def test_a_web_address_whose_name_says_no_kind_is_left_for_dify_to_judge(form: Form) -> None:
    # Dify fetches such an address's headers to tell its kind (a PDF served from
    # ".../download?id=123" is a document); the inbox sends it as the kind the input takes.
    for url in ("https://example.com/download?id=123", "https://drive.example.com/"):
        data = api_data(form, receipt=url, evidence=[])
        dform = decision_form(form, data, require_every_key=True)
        assert dform.is_valid(), (url, dform.errors)
        assert dform.dify_inputs()["receipt"] == {
            "transfer_method": "remote_url",
            "url": url,
            "type": "image",
        }
    # One whose name does tell its kind is still judged here.
    data = api_data(form, receipt="https://example.com/setup.exe", evidence=[])
    dform = decision_form(form, data, require_every_key=True)
    assert not dform.is_valid()
    assert "setup.exe" in str(dform.errors["in_receipt"])


def test_a_web_address_with_no_kind_goes_as_custom_where_only_custom_files_are_taken() -> None:
    from inbox.forms import InputSpec

    only_custom = InputSpec(
        kind="file",
        name="drawing",
        allowed_types=("custom",),
        allowed_extensions=(".dwg",),
        allowed_methods=("remote_url",),
    )
    # A presigned link to a drawing: Dify reads its name from the headers and judges it.
    assert only_custom.url_type_for_dify("https://files.example.com/download?id=123") == "custom"
    # A name that says its kind is judged here, as before.
    assert only_custom.url_type_for_dify("https://files.example.com/plan.pdf") is None
