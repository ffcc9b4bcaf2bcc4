"""Capture: what the events of a run's stream mean for our records.

`Run.apply_event(s)` in models.py is the verb; the bookkeeping lives here so the model stays
readable. The rules every handler keeps:

- **Idempotent.** A snapshot replay (`include_state_snapshot=true`) repeats `workflow_started`,
  every executed node, each pending `human_input_required` with a *fresh* token and the
  `workflow_paused` or `workflow_finished`. Replaying any of that creates nothing twice: forms are
  keyed by Dify's `form_id`, timeline entries and stored events by a key of their own.
- **Replay-tolerant.** Newer builds replay the run's retained event log from its start instead
  (CONTRACT 6.1): every fill, timeout and text chunk again. Fills and timeouts name a node, not a
  form, so each is given to the form it settled (`_Batch.settled_form`), one already recorded
  changing nothing; text the replay repeats is recognised, not appended again. Both read the
  stream's order, which the follower carries from one batch to the next (`StreamState`).
- **Order-tolerant.** A final status is never undone by a late or replayed event; a paused run
  only counts as running again once Dify says a form was filled or timed out.
- **Compact.** Node events become one timeline entry per node execution, text chunks are
  appended to the answer (chatflow) or to their node's entry, not stored one row each. Only the
  events someone reads later (fills, timeouts, the end, errors, anything unknown) are kept as
  `RunEvent` rows, and never with a form token in them.
- **No NUL characters, no lone surrogates.** An LLM's output can hold either and no database
  stores them: events are cleaned of them before anything is read from them (`storable`; the
  Dify client cleans every answer and event already).
- **No network inside a transaction.** The GET that fetches a form's definition happens before
  (the follower fetches first and passes `definitions`), after (`fetch_definitions`), or, on
  PostgreSQL, at the same time in the follower's event loop: the batch is applied while the GET
  is in flight and waits for its answer, for at most `DefinitionsHandoff.timeout`, before it
  commits (see `DefinitionsHandoff`).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from inbox.dify.errors import DifyError, FormAlreadySubmitted, FormExpired, FormNotFound
from inbox.dify.types import (
    ErrorEvent,
    FormDefinition,
    HumanInputFields,
    HumanInputFormFilled,
    HumanInputFormTimeout,
    HumanInputRequired,
    MessageEnd,
    MessageEvent,
    NodeEvent,
    StreamEvent,
    TextChunk,
    WorkflowFinished,
    WorkflowPaused,
    WorkflowStarted,
    parse_event,
    storable,
)

if TYPE_CHECKING:
    from inbox.models import Form, Run

logger = logging.getLogger(__name__)

# A run's timeline stays small enough to rewrite on every update: a loop that runs a node a
# thousand times keeps its first entry and the most recent ones.
TIMELINE_LIMIT = 300
# Streamed text kept on a node's timeline entry (the whole answer of a chatflow is on the run).
NODE_TEXT_LIMIT = 2000
# An unknown event larger than this is stored as a note of its size, not its content.
MAX_STORED_PAYLOAD = 16 * 1024
# Events that carry nothing we keep (audio chunks of text-to-speech, keep-alives).
IGNORED_EVENTS = frozenset({"ping", "tts_message", "tts_message_end"})
# A decision delivered this recently whose `human_input_form_filled` was not seen yet.
SETTLE_WINDOW = 60.0
CHUNK_EVENTS = frozenset({"message", "agent_message", "text_chunk"})
# A placeholder form recorded from an ingested token before the stream told us its form_id.
INGEST_FORM_PREFIX = "ingest-"

# Forms that still wait for a person (here, in Dify's own channels, or an administrator).
AWAITING_STATUSES = frozenset({"pending", "not_answerable", "submitting", "failed"})
# ... and those whose `human_input_form_filled` is still to come (a decision of ours delivered).
AWAITING_FILL_STATUSES = AWAITING_STATUSES | {"submitted"}

DefinitionResult = FormDefinition | DifyError


@dataclass
class Applied:
    """What applying a batch of events did, for the caller to decide what comes next."""

    # The record moved on: new forms, a status change, new timeline entries, more answer text.
    # A replay that adds nothing leaves it False (the follower's reconnect budget counts on it).
    changed: bool = False
    status: str = ""
    # The last significant event was a `workflow_paused`...
    paused: bool = False
    # ... and at least one of its forms waits for a person. A pause without one is the gap
    # between an accepted submit and Dify's resume task: the run is about to go on.
    awaiting_human: bool = False
    # ... but a decision of ours on this run was just delivered and Dify has not shown its
    # `human_input_form_filled` yet (parallel forms: the next pause may come first). The
    # follower reads on for a short while to record what was filled.
    settling: bool = False
    # Forms (pk -> token) we hold as pending that the last pause no longer lists: Dify settled
    # them (answered elsewhere, expired) while no stream of ours was open. GET form says which.
    unlisted: dict[int, str] = field(default_factory=dict)
    finished: bool = False
    error: str = ""
    forms_created: list[int] = field(default_factory=list)
    # Forms (pk -> token) whose definition still has to come from GET form.
    needs_definition: dict[int, str] = field(default_factory=dict)
    events: int = 0


class DefinitionsHandoff:
    """What GET form answers for the forms of a batch, handed from the follower's event loop,
    which makes the calls, to the database thread, which applies the batch meanwhile.

    The batch locks the run and applies the events before the form's while the GET is in
    flight. If the answer is in when the form comes to be inserted, it is inserted with it;
    if not, the form is inserted and routed from the event and the batch waits for the answer
    only before it commits, then writes the definition. Either way the form becomes visible
    once, complete with its definition and its reviewers, and the moment it does is about
    the longer of the GET and the transaction, not their sum. The run's row stays locked for
    the wait, which is bounded by `timeout`: past it the batch commits with the definition the
    event carried, and the form's definition is fetched again later, as when a GET fails.
    """

    def __init__(self, form_ids: Iterable[str], timeout: float = 2.0) -> None:
        self.form_ids = frozenset(form_ids)
        self.timeout = timeout
        self._answer: concurrent.futures.Future[dict[str, DefinitionResult]] = (
            concurrent.futures.Future()
        )
        # What the batch applied: None until it received the answer, {} if it gave up waiting.
        self.applied: dict[str, DefinitionResult] | None = None

    def give(self, results: Mapping[str, DefinitionResult]) -> None:
        """Called once from the event loop with whatever GET form answered (possibly nothing)."""
        if not self._answer.done():
            self._answer.set_result(dict(results))

    def answered(self) -> dict[str, DefinitionResult] | None:
        """The answer if it is in already, without waiting; None if not."""
        if self.applied is None and self._answer.done():
            self.applied = self._answer.result()
        return self.applied

    def wait(self) -> dict[str, DefinitionResult]:
        if self.applied is not None:
            return self.applied
        try:
            self.applied = self._answer.result(self.timeout)
        except concurrent.futures.TimeoutError:
            logger.info("capture: GET form took over %.1f s, committing without it", self.timeout)
            self.applied = {}
        return self.applied


@dataclass
class StreamState:
    """What one stream of a run has shown so far, carried by its reader from one batch to the
    next (the follower cuts a stream into batches wherever events happen to arrive). Dify's
    order holds within a stream: a form is announced before it is filled or times out, and a
    stream that replays the run from its start repeats the text chunks we hold already. A batch
    applied without one reads as a stream of its own."""

    # Significant events seen (not pings): the first one tells how the stream began.
    events: int = 0
    # The stream began at the run's start (`workflow_started`, not a resumption): a snapshot,
    # or the retained log replayed from the start.
    from_start: bool = False
    # node_id -> the forms this stream announced at that node, in order...
    announced: dict[str, list[str]] = field(default_factory=dict)
    # ... and the forms whose fill or timeout it delivered, the last one per node...
    settled: set[str] = field(default_factory=set)
    last_settled: dict[str, str] = field(default_factory=dict)
    # ... and the forms whose Human Input node's `node_finished` it delivered.
    finished: set[str] = field(default_factory=set)
    # The stream paused the run (a pause replayed or new) and no fill or timeout came since.
    paused: bool = False
    # How far into the run's answer, and into each node's text, a stream replaying from the
    # start has got: chunks that repeat what is there only move this on. None: new text.
    answer_at: int | None = None
    text_at: dict[str, int | None] = field(default_factory=dict)

    def copy(self) -> StreamState:
        return StreamState(
            events=self.events,
            from_start=self.from_start,
            announced={node: list(ids) for node, ids in self.announced.items()},
            settled=set(self.settled),
            last_settled=dict(self.last_settled),
            finished=set(self.finished),
            paused=self.paused,
            answer_at=self.answer_at,
            text_at=dict(self.text_at),
        )


def _follow_on(text: str, at: int | None, chunk: str) -> tuple[str, int | None]:
    """`text` with the next `chunk` of a stream, and where the stream now is in it. `at` is how
    far a replay from the start has got in `text` (None: the stream sends new text only): a
    chunk that repeats what `text` holds there is not added again."""
    if at is None:
        return text + chunk, None
    rest = text[at:]
    if rest.startswith(chunk):
        return text, at + len(chunk)
    if chunk.startswith(rest):
        text += chunk[len(rest) :]
        return text, len(text)
    # Not what we hold: the stream sends new text (a snapshot replays no chunks).
    return text + chunk, None


def event_dict(event: Mapping[str, Any] | StreamEvent) -> dict[str, Any]:
    if isinstance(event, StreamEvent):
        return event.raw or {"event": event.event, "data": event.data}
    return dict(event)


def strip_tokens(value: Any) -> Any:
    """A copy without any `form_token`: what may be stored in clear or shown."""
    if isinstance(value, dict):
        return {k: strip_tokens(v) for k, v in value.items() if k != "form_token"}
    if isinstance(value, list):
        return [strip_tokens(v) for v in value]
    return value


def _when(unix: Any) -> dt.datetime | None:
    if isinstance(unix, bool) or not isinstance(unix, int | float) or unix <= 0:
        return None
    try:
        return dt.datetime.fromtimestamp(unix, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso(value: dt.datetime | None) -> str:
    return (value or timezone.now()).isoformat()


def node_outputs_info(outputs: Any) -> dict[str, Any] | None:
    """What a Human Input node's `node_finished` outputs say of the answer that filled its form
    (`__action_id`, `__rendered_content`, and the values under their names); None when they
    name no action (a timeout's `__timeout`, a snapshot's empty outputs)."""
    if not isinstance(outputs, dict):
        return None
    action = outputs.get("__action_id")
    if not isinstance(action, str) or not action or action == "__timeout":
        return None
    rendered = outputs.get("__rendered_content")
    return {
        "filled_action_id": action[:64],
        "filled_action_text": "",
        "rendered_content": rendered if isinstance(rendered, str) else "",
        "filled_data": {k: v for k, v in outputs.items() if not str(k).startswith("__")},
    }


def same_form(content: str, fields: HumanInputFields) -> bool:
    """Whether a form known only by its token is the form `fields` announces. GET form says
    nothing of a form's id, node or run, and a snapshot hands out a fresh token for each
    pending form, so the one thing to compare is the form's content (workflow variables
    substituted in: the same form of the same run reads the same; forms of two runs that
    read exactly alike cannot be told apart this way). Used when an ingest checks
    that a token's form is one its run waits at (`inbox.runs`), and when the stream later names
    the form an ingest recorded (`_Batch.adopt_placeholder`)."""
    return content == fields.form_content


def pending_forms_in(events: Iterable[Mapping[str, Any] | StreamEvent]) -> list[HumanInputFields]:
    """The forms a batch of events announces (`human_input_required` and pause reasons)."""
    found: list[HumanInputFields] = []
    for raw in events:
        event = raw if isinstance(raw, StreamEvent) else parse_event(dict(raw))
        if isinstance(event, HumanInputRequired):
            found.append(event)
        elif isinstance(event, WorkflowPaused):
            found.extend(r for r in event.reasons if r.is_human_input or r.form_id)
    return found


class _Batch:
    """One transaction's worth of events applied to one locked run."""

    def __init__(
        self,
        run: Run,
        definitions: Mapping[str, DefinitionResult] | None,
        source: str,
        handoff: DefinitionsHandoff | None = None,
        stream: StreamState | None = None,
    ) -> None:
        from inbox.models import Run

        self.run = Run.objects.select_for_update().get(pk=run.pk)
        self.stream = stream or StreamState()
        self.initial_status = self.run.status
        self.definitions = dict(definitions or {})
        self.source = source
        self.applied = Applied(status=self.run.status)
        self.run_fields: set[str] = set()
        self.timeline: list[dict[str, Any]] = list(self.run.timeline or [])
        self.timeline_index = {
            item.get("key"): i for i, item in enumerate(self.timeline) if isinstance(item, dict)
        }
        self.timeline_changed = False
        self._forms: dict[str, Form] | None = None
        self.announced: set[str] = set()
        self.elsewhere: dict[str, Form] = {}
        self.stored: list[tuple[str, str, dict[str, Any]]] = []
        # Forms this batch inserted with the definition GET form gave: the pause that follows
        # their announcement names them again, with nothing new to write.
        self.defined_here: set[str] = set()
        # Forms whose GET form is in flight while this batch is applied (DefinitionsHandoff):
        # the latest announcement of each, and those this batch created, whose capture is
        # recorded once the answer is in (`receive`).
        self.handoff = handoff
        self.waiting: dict[str, HumanInputFields] = {}
        self.uncaptured: dict[str, Form] = {}
        self.last_pause: list[Form | None] | None = None
        self.events_saved = False
        # form_id -> how its fill ("filled:<action>") or timeout ("timeout") was recorded.
        self._settlements: dict[str, set[str]] | None = None
        # form pk -> its decision delivered by presumption, unsettled (`presumed`).
        self._presumed: dict[int, Any] = {}

    # --- helpers ---

    @property
    def forms(self) -> dict[str, Form]:
        """The run's forms by form_id. Read with them, in the same query: forms of other runs
        bearing an id this batch announces (`elsewhere`), which a new form must not collide
        with (two records of one Dify run, see `create_form`)."""
        from inbox.models import Form

        if self._forms is None:
            wanted = Q(run=self.run)
            if self.announced:
                wanted |= Q(form_id__in=self.announced)
            self._forms = {}
            for form in Form.objects.filter(wanted).order_by("created_at", "id"):
                if form.run_id == self.run.pk:
                    self._forms[form.form_id] = form
                else:
                    self.elsewhere[form.form_id] = form
        return self._forms

    def set_run(self, name: str, value: Any) -> None:
        if getattr(self.run, name) != value:
            setattr(self.run, name, value)
            self.run_fields.add(name)
            if name == "error" and self.run.error_parts:
                # Dify's own words replace the inbox's: shown as they are, in any language.
                self.run.error_parts = {}
                self.run_fields.add("error_parts")

    def progress(self) -> None:
        self.applied.changed = True

    def entry(self, key: str, **values: Any) -> dict[str, Any]:
        """The timeline entry `key`, created at the end if new; `values` fill in what changed."""
        index = self.timeline_index.get(key)
        if index is None:
            item: dict[str, Any] = {"key": key, **values}
            self.timeline.append(item)
            self.timeline_index[key] = len(self.timeline) - 1
            self.timeline_changed = True
            self.progress()
            return item
        item = self.timeline[index]
        for name, value in values.items():
            # When something happened is fixed by its first sighting; a replay does not move it.
            if name == "at" and item.get("at"):
                continue
            if value not in (None, "") and item.get(name) != value:
                item[name] = value
                self.timeline_changed = True
                self.progress()
        return item

    def store(self, name: str, key: str, payload: Any) -> None:
        data = strip_tokens(payload)
        text = json.dumps(data, default=str)
        if len(text) > MAX_STORED_PAYLOAD:
            data = {"truncated": True, "size": len(text)}
        self.stored.append((name, key[:200], data))

    def resume(self) -> None:
        """Dify said a form was filled or timed out: the run is moving again. (Whether the
        status changed is judged at the end of the batch: a replay pauses and resumes it.)"""
        if self.run.status == "paused":
            self.set_run("status", "running")

    @property
    def settlements(self) -> dict[str, set[str]]:
        """How each form's fill or timeout was recorded, from the stored events' keys."""
        from inbox.models import RunEvent

        if self._settlements is None:
            self._settlements = {}
            keys = RunEvent.objects.filter(
                run=self.run, event__in=("human_input_form_filled", "human_input_form_timeout")
            ).values_list("key", flat=True)
            for key in keys:
                kind, _, rest = key.partition(":")
                if kind == "filled":
                    form_id, _, action = rest.rpartition(":")
                    self._settlements.setdefault(form_id, set()).add(f"filled:{action}")
                elif kind == "timeout":
                    self._settlements.setdefault(rest, set()).add("timeout")
        return self._settlements

    def settled_form(
        self,
        node_id: str,
        *,
        repeats: Callable[[Form, bool], bool],
        awaits: Callable[[Form], bool],
        open_statuses: frozenset[str],
    ) -> tuple[Form | None, bool]:
        """The form a fill or timeout is about, and whether the event repeats what is recorded
        of it already (a replay). Events name the node, not the form, and a node in a loop has
        had several forms: `repeats(form, strict)` says the event is the one recorded for that
        form, `awaits(form)` that the form has had no fill or timeout yet."""
        candidates = [f for f in self.forms.values() if f.node_id == node_id]
        order = self.stream.announced.get(node_id, [])
        # Dify settles a node's form after announcing it: in a stream that announced forms at
        # this node, the event is about one of those it has not settled yet.
        here = sorted(
            (f for f in candidates if f.form_id in order and f.form_id not in self.stream.settled),
            key=lambda f: order.index(f.form_id),
        )
        for form in here:
            if repeats(form, False):
                return form, True
        for form in here:
            if awaits(form):
                return form, False
        if not self.stream.from_start:
            # A stream that did not begin at the start (a log Dify trimmed, a batch applied on
            # its own) may repeat a fill without the announcement before it. A stream that did
            # begin there announces a form before replaying its fill.
            for form in candidates:
                if form.form_id not in self.stream.settled and repeats(form, True):
                    return form, True
        for form in candidates:
            if awaits(form) and form.status in open_statuses:
                return form, False
        # Settled here by other means (GET form said so, the run ended) before Dify told how.
        for form in reversed(candidates):
            if awaits(form):
                return form, False
        return None, False

    def settle(self, form: Form | None, mark: str, replayed: bool) -> None:
        """Note a fill or timeout as this stream's; the run goes on (`resume`) unless it was
        only a replay, which resumes only a pause the same replay applied."""
        if form is not None:
            self.stream.settled.add(form.form_id)
            self.stream.last_settled[form.node_id] = form.form_id
            if not replayed:
                self.settlements.setdefault(form.form_id, set()).add(mark)
        if not replayed or self.stream.paused:
            self.resume()
        self.stream.paused = False

    # --- the events ---

    def apply(self, raw: dict[str, Any]) -> None:
        name = str(raw.get("event") or "")
        if not name or name in IGNORED_EVENTS:
            return
        event = parse_event(raw)
        self.applied.events += 1
        first = self.stream.events == 0
        self.stream.events += 1
        if event.task_id and not self.run.is_finished:
            self.set_run("task_id", event.task_id[:64])
        if event.conversation_id:
            self.set_run("conversation_id", event.conversation_id[:64])
        if event.message_id and name != "workflow_finished":
            self.set_run("message_id", event.message_id[:64])
        if event.workflow_run_id and not self.run.workflow_run_id:
            self.set_run("workflow_run_id", event.workflow_run_id[:64])
        if name not in CHUNK_EVENTS:
            self.applied.paused = self.applied.awaiting_human = self.applied.settling = False
            self.last_pause = None
        if isinstance(event, WorkflowStarted):
            self.started(event, first)
        elif isinstance(event, HumanInputRequired):
            self.form_announced(event)
        elif isinstance(event, WorkflowPaused):
            self.paused(event)
        elif isinstance(event, HumanInputFormFilled):
            self.filled(event)
        elif isinstance(event, HumanInputFormTimeout):
            self.timed_out(event)
        elif isinstance(event, WorkflowFinished):
            self.finished(event)
        elif isinstance(event, NodeEvent):
            self.node(event)
        elif isinstance(event, TextChunk):
            self.text(event)
        elif isinstance(event, MessageEvent):
            self.message(event)
        elif isinstance(event, MessageEnd):
            self.store(name, f"message_end:{event.id or event.message_id}", raw)
            if isinstance(raw.get("answer"), str):
                self.set_answer(raw["answer"])
        elif isinstance(event, ErrorEvent):
            self.error(event)
        else:
            digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode())
            self.store(name[:64], f"{name}:{digest.hexdigest()[:40]}", raw)

    def started(self, event: WorkflowStarted, first: bool) -> None:
        # A paused run that goes on starts again with reason "resumption" (mid-stream, or first
        # on a stream opened just then); a stream that opens with any other start replays the
        # run from its beginning, and its chunks repeat the text we hold.
        if first and event.data.get("reason") != "resumption":
            self.stream.from_start = True
            self.stream.answer_at = 0
        if self.run.status == "starting":
            self.set_run("status", "running")
            self.progress()
        created = _when(event.data.get("created_at"))
        self.entry("started", event="workflow_started", status="running", at=_iso(created))

    def node(self, event: NodeEvent) -> None:
        data = event.data
        if event.event.endswith(("_next", "_retry")):
            return
        finished = event.event.endswith(("_finished", "_completed", "_succeeded", "_failed"))
        outputs = data.get("outputs")
        if finished and isinstance(outputs, dict) and "__action_id" in outputs:
            self.human_input_finished(event.node_id, outputs, _when(data.get("finished_at")))
        # Nodes inside an iteration or a loop would fill the timeline with one entry per pass;
        # the iteration's own events stand for them.
        if data.get("iteration_id") or data.get("loop_id"):
            return
        key = f"node:{event.id or f'{event.node_id}:{event.index}'}"
        status = (event.status or ("succeeded" if finished else "running")).lower()
        when = _when(data.get("created_at"))
        item = self.entry(
            key,
            event="node",
            node_id=event.node_id,
            node_type=event.node_type or event.event.split("_", 1)[0],
            title=event.title or event.node_id,
            at=_iso(when),
        )
        if finished or "status" not in item:
            self.entry(key, status=status)
            if event.error:
                self.entry(key, error=str(event.error)[:500])
        whole = outputs.get("text") if finished and isinstance(outputs, dict) else None
        if isinstance(whole, str) and whole and "text" in item:
            # The node's whole text, which the chunks seen may only end (streamed before this
            # stream opened): it replaces them.
            whole = whole[:NODE_TEXT_LIMIT]
            if item["text"] != whole:
                item["text"] = whole
                self.timeline_changed = True

    def human_input_finished(
        self, node_id: str, outputs: dict[str, Any], at: dt.datetime | None
    ) -> None:
        """A Human Input node finished: its outputs name the action that filled its form
        (`__action_id`) and the values, evidence for a decision of ours delivered by
        presumption (the fill itself may never be seen), and of how a form answered in Dify
        was answered (`answer_learnt`), with when (the node's `finished_at`). `__timeout`
        names none."""
        form = self.finished_form(node_id)
        filled = node_outputs_info(outputs)
        if form is None or filled is None:
            return
        if form.status == "answered_elsewhere":
            self.answer_learnt(form, filled, evidence="node_finished", at=at)
            return
        self.check_presumption(form, filled, evidence="node_finished")

    def answer_learnt(
        self, form: Form, filled: dict[str, Any], *, evidence: str, at: dt.datetime | None
    ) -> None:
        """Dify's events show how a form answered in Dify was answered (`Form.learn_answer`).
        Where the inbox did not know how, and the form's last decision was refused by Dify as
        come too late (`Decision.refused_as_answered`), that answer may be the decision itself,
        delivered by an attempt this database never recorded: it is then corrected to
        delivered (`Decision.correct_rejection`)."""
        from inbox.models import Decision

        unknown = not form.filled_action_id
        fields = form.learn_answer(filled, evidence=evidence, source=self.source, at=at)
        if fields:
            form.save(update_fields=[*fields, "updated_at"])
            self.progress()
        if not unknown:
            return
        decision = Decision.refused_as_answered(form)
        if decision is not None and decision.correct_rejection(
            form, filled, evidence=evidence, source=self.source
        ):
            self.progress()
            self.settle_timeline()

    def finished_form(self, node_id: str) -> Form | None:
        """The form a Human Input node's `node_finished` is about. Nothing Dify sends ties the
        two: the event names the node and its execution, the form's announcement names no
        execution, and the outputs name no form. A node in a loop has had several forms, so
        the stream's order tells, as for fills (`settled_form`): Dify finishes a node's form
        right after its fill or timeout, and after announcing it. It is the form whose fill or
        timeout the stream delivered last at the node, unless that one finished already; else
        the first form the stream announced there and has not finished. Only a stream that showed
        nothing of the node falls back on the node id: its only form, or, in a live stream,
        its newest (the pass Dify is at); in a replay from the start (which announces every
        form before finishing it) several forms leave it unknown."""
        order = self.stream.announced.get(node_id, [])
        last = self.stream.last_settled.get(node_id)
        done = self.stream.finished
        form_id = last if last is not None and last not in done else None
        if form_id is None:
            form_id = next((f for f in order if f not in done), None)
        if form_id is None and not order and last is None:
            candidates = [f for f in self.forms.values() if f.node_id == node_id]
            if len(candidates) == 1 or (candidates and not self.stream.from_start):
                form_id = candidates[-1].form_id
        if form_id is None:
            return None
        done.add(form_id)
        return self.forms.get(form_id)

    def text(self, event: TextChunk) -> None:
        if not event.text:
            return
        node_id = event.from_variable_selector[0] if event.from_variable_selector else ""
        for index in range(len(self.timeline) - 1, -1, -1):
            item = self.timeline[index]
            if item.get("event") == "node" and item.get("node_id") == node_id:
                key = str(item.get("key"))
                at = self.stream.text_at.get(key, 0 if self.stream.from_start else None)
                before = str(item.get("text", ""))
                text, self.stream.text_at[key] = _follow_on(before, at, event.text)
                text = text[:NODE_TEXT_LIMIT]
                if text != before:
                    item["text"] = text
                    self.timeline_changed = True
                    self.progress()
                return

    def message(self, event: MessageEvent) -> None:
        if event.event == "message_replace":
            # A snapshot starts with the whole answer so far; it replaces, never appends.
            self.set_answer(event.answer)
            return
        if not event.answer or self.run.is_finished:
            # A finished run's answer is settled: chunks now come from a late replay.
            return
        answer, self.stream.answer_at = _follow_on(
            self.run.answer, self.stream.answer_at, event.answer
        )
        if answer != self.run.answer:
            self.set_run("answer", answer)
            self.progress()

    def set_answer(self, answer: str) -> None:
        """The whole answer so far, as Dify says it (`message_replace`, `message_end`)."""
        if self.run.is_finished:
            return
        if self.stream.answer_at is not None:
            self.stream.answer_at = len(answer)
        if self.run.answer != answer:
            self.set_run("answer", answer)
            self.progress()

    def error(self, event: ErrorEvent) -> None:
        message = event.message or event.code or "error"
        self.applied.error = message
        if self.run.error != message:
            self.set_run("error", message)
            self.progress()
        self.store("error", f"error:{event.code}:{message[:120]}", event.raw)

    # --- forms ---

    def form_announced(self, fields: HumanInputFields) -> Form | None:
        form = self._form_announced(fields)
        if form is not None:
            order = self.stream.announced.setdefault(form.node_id, [])
            if form.form_id not in order:
                order.append(form.form_id)
        return form

    def _form_announced(self, fields: HumanInputFields) -> Form | None:
        if not fields.form_id:
            return None
        form = self.forms.get(fields.form_id)
        fetched = self.definitions.get(fields.form_id)
        if fetched is None and self.handoff and fields.form_id in self.handoff.form_ids:
            answered = self.handoff.answered()
            if answered is None:
                self.waiting[fields.form_id] = fields
            else:
                if self.waiting:
                    # The answer came in while this batch was being applied, after it inserted
                    # forms without it: they are captured with it now, before the form is
                    # named again (the pause's reasons) and settled by it, so the trail reads
                    # "captured" then "expired" whenever the answer lands.
                    self.receive(answered)
                self.definitions.update(answered)
                fetched = answered.get(fields.form_id)
        if form is None:
            form = self.adopt_placeholder(fields)
        if form is None:
            return self.create_form(fields, fetched)
        self.refresh_form(form, fields, fetched)
        return form

    def create_form(self, fields: HumanInputFields, fetched: DefinitionResult | None) -> Form:
        from inbox.models import Form

        token = fields.form_token or ""
        definition = fetched if isinstance(fetched, FormDefinition) else fields.definition
        # A form GET form says is closed (412) is inserted open and settled right after, by
        # the step every path shares (`closed_in_dify`): its audit trail and its timeline entry
        # read the same whichever way the answer came.
        status = Form.Status.PENDING if token else Form.Status.NOT_ANSWERABLE
        expires = definition.expiration_time or fields.expiration_time
        form = Form(
            run=self.run,
            form_id=fields.form_id[:64],
            form_token=token,
            node_id=fields.node_id[:128],
            node_title=fields.node_title[:255],
            content=definition.form_content,
            definition=definition.to_json(),
            approval_channels=list(fields.approval_channels),
            expiration_time=_when(expires),
            status=status,
            definition_fetched_at=timezone.now() if isinstance(fetched, FormDefinition) else None,
        )
        existing = self.elsewhere.get(form.form_id)
        if existing is not None:
            # The same Dify form recorded under another run (one Dify run recorded twice):
            # that record is the form. Every path that creates a form of this run holds the
            # run's lock and has read its forms, so the insert below cannot collide otherwise;
            # if a second record of the run inserts it at this very moment, the batch fails and
            # is applied again from Dify's snapshot, which finds it.
            self.forms[existing.form_id] = existing
            self.refresh_form(existing, fields, fetched)
            return existing
        form.save()
        self.forms[form.form_id] = form
        if isinstance(fetched, FormDefinition):
            self.defined_here.add(form.form_id)
        self.applied.forms_created.append(form.pk)
        self.entry(
            f"form:{form.form_id}",
            event="human_input_required",
            node_id=form.node_id,
            title=form.node_title or form.node_id,
            status="waiting",
            form=str(form.public_id),
            at=_iso(None),
        )
        if fetched is None and form.form_id in self.waiting:
            self.uncaptured[form.form_id] = form
        else:
            self.captured(form, fetched)
        return form

    def captured(self, form: Form, fetched: DefinitionResult | None) -> None:
        """Record the capture of a form this batch inserted, with what GET form answered: a
        closed form (412) is settled at once, one without an answer fetched again later."""
        from inbox.forms import unmatchable_extensions
        from inbox.models import AuditEntry

        AuditEntry.record(
            "form_captured",
            form,
            source=self.source,
            status=form.status,
            definition="get" if isinstance(fetched, FormDefinition) else "event",
        )
        unmatchable = unmatchable_extensions(form.definition or {})
        if unmatchable:
            # Dropped from what the form's file inputs offer: the workflow's author is told, once
            # per form, as it is captured (staff read it on the form's page too).
            message = (
                "form %s (app %s, node %s): the workflow lists file types Dify cannot accept: "
                "%s. Change them in the workflow (a dot and lower case, one part: '.dxf'; one of"
                " Dify's own kinds, as '.pdf', only with its kind allowed)."
            )
            args = (form.public_id, self.run.app.name, form.node_id, ", ".join(unmatchable))
            transaction.on_commit(lambda: logger.warning(message, *args))
        if isinstance(fetched, FormAlreadySubmitted | FormExpired):
            self.closed_in_dify(form, fetched)
        elif form.form_token and not isinstance(fetched, FormDefinition):
            self.applied.needs_definition[form.pk] = form.form_token

    def receive(self, results: Mapping[str, DefinitionResult]) -> None:
        """The answers of the GET forms this batch waited for (DefinitionsHandoff): before it
        commits, or as soon as they are in when the batch names a form of the handoff again."""
        self.definitions.update(results)
        for form_id, fields in self.waiting.items():
            fetched = results.get(form_id)
            created = self.uncaptured.pop(form_id, None)
            if created is None:
                if form_id in self.forms:
                    self.refresh_form(self.forms[form_id], fields, fetched)
                continue
            if isinstance(fetched, FormDefinition):
                created.save(update_fields=[*_set_definition(created, fetched), "updated_at"])
                self.defined_here.add(form_id)
            self.captured(created, fetched)
        self.waiting.clear()
        if self.last_pause is not None:
            self.applied.awaiting_human = any(
                f is not None and f.status in AWAITING_STATUSES for f in self.last_pause
            )

    def adopt_placeholder(self, fields: HumanInputFields) -> Form | None:
        """A form recorded from an ingested token has no form_id yet; the first announcement
        with the same content in this run is that form."""
        for form in list(self.forms.values()):
            if not form.form_id.startswith(INGEST_FORM_PREFIX):
                continue
            if not same_form(form.content, fields):
                continue
            del self.forms[form.form_id]
            form.form_id = fields.form_id[:64]
            form.node_id = fields.node_id[:128]
            form.node_title = fields.node_title[:255]
            form.approval_channels = list(fields.approval_channels)
            form.save(
                update_fields=[
                    "form_id",
                    "node_id",
                    "node_title",
                    "approval_channels",
                    "updated_at",
                ]
            )
            self.forms[form.form_id] = form
            self.progress()
            return form
        return None

    def refresh_form(
        self, form: Form, fields: HumanInputFields, fetched: DefinitionResult | None
    ) -> None:
        from inbox.models import Form

        updates: list[str] = []
        token = fields.form_token or ""
        if token and token != form.form_token and form.status not in Form.TOKEN_DROPPED:
            # A snapshot hands out a fresh token for a pending form; the newest one is kept.
            # (A closed form's was let go as it closed: a replay does not bring it back.)
            form.form_token = token
            updates.append("form_token")
            if form.status == Form.Status.NOT_ANSWERABLE:
                form.status = Form.Status.PENDING
                updates.append("status")
        if fields.approval_channels and fields.approval_channels != form.approval_channels:
            form.approval_channels = list(fields.approval_channels)
            updates.append("approval_channels")
        if isinstance(fetched, FormDefinition) and form.form_id not in self.defined_here:
            updates += _set_definition(form, fetched)
        if updates:
            form.save(update_fields=[*updates, "updated_at"])
        if isinstance(fetched, FormAlreadySubmitted | FormExpired):
            self.closed_in_dify(form, fetched)
        elif (
            form.form_token
            and form.definition_fetched_at is None
            and fetched is None
            and form.form_id not in self.waiting
        ):
            self.applied.needs_definition[form.pk] = form.form_token

    def closed_in_dify(self, form: Form, error: FormAlreadySubmitted | FormExpired) -> None:
        """GET form answered 412: the form was answered elsewhere or expired before we saw it."""
        from inbox.models import AuditEntry, Form

        if form.status not in (Form.Status.PENDING, Form.Status.NOT_ANSWERABLE):
            return  # a decision of ours is in flight: delivery settles it
        status = (
            Form.Status.ANSWERED_ELSEWHERE
            if isinstance(error, FormAlreadySubmitted)
            else Form.Status.EXPIRED
        )
        previous = form.status
        form.status = status
        form.checked_at = timezone.now()
        form.save(update_fields=["status", "checked_at", "updated_at"])
        AuditEntry.record(
            f"form_{status}",
            form,
            previous=previous,
            reason=f"GET form: {error.code}",
            source=self.source,
        )
        if f"form:{form.form_id}" in self.timeline_index:
            label = "answered" if status == Form.Status.ANSWERED_ELSEWHERE else "expired"
            self.entry(f"form:{form.form_id}", status=label)
        if status == Form.Status.ANSWERED_ELSEWHERE:
            self.evidence_wanted()
        self.progress()

    def evidence_wanted(self) -> None:
        """A form closed as answered in Dify without Dify saying how: the run's events, read
        once more with a snapshot (the run followable for it, finished or not:
        `Form.answer_unknown`), may show it where Dify replays them. Not asked by a follower's
        own stream, which has just shown what it had."""
        from inbox.models import request_follow

        if self.source == "stream" or self.run.events_unavailable:
            # A run whose events Dify shows to no one (started in its WebApp or console) has
            # nothing to show either.
            return
        run_pk = self.run.pk
        transaction.on_commit(lambda: request_follow(run_pk))

    def paused(self, event: WorkflowPaused) -> None:
        announced = [self.form_announced(r) for r in event.reasons if r.is_human_input or r.form_id]
        if not self.run.is_finished and self.run.status != "paused":
            self.set_run("status", "paused")
        self.applied.paused = True
        self.stream.paused = True
        self.last_pause = announced
        self.applied.awaiting_human = any(
            f is not None and f.status in AWAITING_STATUSES for f in announced
        )
        self.settle_timeline()
        listed = {f.form_id for f in announced if f is not None}
        unlisted = [
            f
            for f in self.forms.values()
            if f.form_id not in listed and f.status in ("pending", "not_answerable")
        ]
        self.applied.unlisted = {f.pk: f.form_token for f in unlisted if f.form_token}
        recently = timezone.now() - dt.timedelta(seconds=SETTLE_WINDOW)
        self.applied.settling = bool(unlisted) or any(
            f.status == "submitted" and not f.rendered_content and f.updated_at >= recently
            for f in self.forms.values()
        )

    def filled(self, event: HumanInputFormFilled) -> None:
        from inbox.models import AuditEntry, Decision, Form

        action = event.action_id[:64]
        mark = f"filled:{event.action_id}"

        def repeats(form: Form, strict: bool) -> bool:
            return (
                mark in self.settlements.get(form.form_id, ())
                and form.rendered_content == event.rendered_content
            )

        def awaits(form: Form) -> bool:
            # A decision of ours that Dify accepted sets the action before the fill shows it;
            # one delivered by presumption only presumes it (the fill may name another).
            return (
                form.form_id not in self.settlements
                and not form.rendered_content
                and (form.filled_action_id in ("", action) or self.presumed(form) is not None)
            )

        form, replayed = self.settled_form(
            event.node_id, repeats=repeats, awaits=awaits, open_statuses=AWAITING_FILL_STATUSES
        )
        self.settle(form, mark, replayed)
        if replayed:
            return
        key = f"filled:{form.form_id if form else event.node_id}:{event.action_id}"
        self.store("human_input_form_filled", key, event.raw)
        if form is None:
            self.entry(
                key,
                event="human_input_form_filled",
                node_id=event.node_id,
                title=event.node_title or event.node_id,
                status="answered",
                action=event.action_text or event.action_id,
                at=_iso(None),
            )
            return
        if form.status == Form.Status.ANSWERED_ELSEWHERE:
            # Closed here as answered in Dify (GET form said so), maybe without knowing how.
            self.answer_learnt(
                form,
                {
                    "filled_action_id": event.action_id,
                    "filled_action_text": event.action_text,
                    "rendered_content": event.rendered_content,
                    "filled_data": event.submitted_data or {},
                },
                evidence="human_input_form_filled",
                at=None if self.stream.from_start else timezone.now(),
            )
            self.fill_entries(form, key, event)
            return
        updates: list[str] = []
        filled = {
            "rendered_content": event.rendered_content,
            "filled_action_id": event.action_id[:64],
            "filled_action_text": (event.action_text or form.action_title(event.action_id))[:255],
        }
        for name, value in filled.items():
            if value and not getattr(form, name):
                setattr(form, name, value)
                updates.append(name)
        if event.submitted_data and not form.filled_data:
            form.filled_data = event.submitted_data
            updates.append("filled_data")
        previous = form.status
        if (
            previous
            in (
                Form.Status.PENDING,
                Form.Status.NOT_ANSWERABLE,
                Form.Status.EXPIRED,
            )
            and not form.decisions.filter(status=Decision.Status.DELIVERED).exists()
        ):
            # Nobody here answered it: someone did in Dify (the WebApp, an email link, the
            # console). A decision of ours in flight (`submitting`) is settled by delivery.
            form.status = Form.Status.ANSWERED_ELSEWHERE
            updates.append("status")
            if form.decided_at is None and not self.stream.from_start:
                # Seen as it happened (a replay from the run's start shows it late: the node's
                # `finished_at` says when).
                form.decided_at = timezone.now()
                updates.append("decided_at")
        if updates:
            form.save(update_fields=[*updates, "updated_at"])
            self.progress()
        if "status" in updates:
            AuditEntry.record(
                "form_answered_elsewhere",
                form,
                previous=previous,
                action=form.filled_action_id,
                source=self.source,
            )
        if previous == Form.Status.SUBMITTED:
            self.check_presumption(
                form,
                {
                    "filled_action_id": event.action_id,
                    "filled_action_text": event.action_text,
                    "rendered_content": event.rendered_content,
                    "filled_data": event.submitted_data or {},
                },
                evidence="human_input_form_filled",
            )
        self.fill_entries(form, key, event)

    def fill_entries(self, form: Form, key: str, event: HumanInputFormFilled) -> None:
        # The pause's own entry says the run paused here; the answer is the entry below, at the
        # time it came (both saying "answered" read as two answers).
        self.entry(f"form:{form.form_id}", status="paused")
        self.entry(
            key,
            event="human_input_form_filled",
            node_id=form.node_id,
            title=form.node_title or form.node_id,
            status="answered",
            action=form.filled_action_text or event.action_id,
            form=str(form.public_id),
            at=_iso(None),
        )

    def presumed(self, form: Form) -> Any:
        """The form's decision delivered by presumption and not yet confirmed or corrected
        (`Decision.presumed_on`), asked once per form and batch."""
        from inbox.models import Decision

        if form.status != "submitted":
            return None
        if form.pk not in self._presumed:
            self._presumed[form.pk] = Decision.presumed_on(form)
        return self._presumed[form.pk]

    def check_presumption(self, form: Form, filled: dict[str, Any], *, evidence: str) -> None:
        """Dify's events name the action that filled a form: a decision of ours delivered by
        presumption is confirmed by it, or corrected (answered elsewhere) when it is another.
        Idempotent: a replay finds the presumption settled."""
        decision = self.presumed(form)
        if decision is None:
            return
        old_action = form.filled_action_id
        outcome = decision.settle_presumption(form, filled, evidence=evidence, source=self.source)
        self._presumed[form.pk] = None
        if outcome != "corrected":
            return
        self.progress()
        # The answer the timeline gave the form from our presumed action (`settle_timeline`)
        # is not Dify's: it goes, the fill's own entry (or the next settle) says the right one.
        stale = self.timeline_index.get(f"filled:{form.form_id}:{old_action}")
        if old_action and old_action != form.filled_action_id and stale is not None:
            del self.timeline[stale]
            self.timeline_index = {
                item.get("key"): i for i, item in enumerate(self.timeline) if isinstance(item, dict)
            }
            self.timeline_changed = True
        answer = f"filled:{form.form_id}:{form.filled_action_id}"
        if answer not in self.timeline_index and f"form:{form.form_id}" in self.timeline_index:
            self.timeline[self.timeline_index[f"form:{form.form_id}"]]["status"] = "waiting"
            self.timeline_changed = True
            self.settle_timeline()

    def timed_out(self, event: HumanInputFormTimeout) -> None:
        from inbox.models import AuditEntry, Form

        expires = event.expiration_time

        def repeats(form: Form, strict: bool) -> bool:
            if "timeout" not in self.settlements.get(form.form_id, ()):
                return False
            # Out of the stream's order, the time it names tells one form of the node from
            # the next (an event without one is taken as a repeat: it changes nothing).
            known = form.expiration_time
            return not strict or not expires or known is None or int(known.timestamp()) == expires

        def awaits(form: Form) -> bool:
            return form.form_id not in self.settlements and not form.filled_action_id

        form, replayed = self.settled_form(
            event.node_id, repeats=repeats, awaits=awaits, open_statuses=AWAITING_STATUSES
        )
        self.settle(form, "timeout", replayed)
        if replayed:
            return
        key = f"timeout:{form.form_id if form else event.node_id}"
        self.store("human_input_form_timeout", key, event.raw)
        if form is not None and form.status in (Form.Status.PENDING, Form.Status.NOT_ANSWERABLE):
            previous = form.status
            form.status = Form.Status.EXPIRED
            form.save(update_fields=["status", "updated_at"])
            AuditEntry.record(
                "form_expired",
                form,
                previous=previous,
                reason="human_input_form_timeout",
                source=self.source,
            )
            self.progress()
        if form is not None:
            self.entry(f"form:{form.form_id}", status="expired")
        self.entry(
            key,
            event="human_input_form_timeout",
            node_id=event.node_id,
            title=event.node_title or event.node_id,
            status="expired",
            at=_iso(None),
        )

    def finished(self, event: WorkflowFinished) -> None:
        from inbox.models import Run

        self.applied.finished = True
        self.store("workflow_finished", "workflow_finished", event.raw)
        status = event.status if event.status in Run.FINAL_STATUSES else "failed"
        if not self.run.is_finished:
            self.set_run("status", status)
            self.progress()
        if event.outputs and not self.run.outputs:
            self.set_run("outputs", event.outputs)
        answer = event.outputs.get("answer")
        if isinstance(answer, str) and answer and answer != self.run.answer:
            # Dify's final word on the answer: it also repairs one a replay made longer (a
            # stream opened after a chatflow ended carries no message chunks at all).
            self.set_run("answer", answer)
            self.progress()
        if event.error and not self.run.error:
            self.set_run("error", str(event.error))
        if self.run.finished_at is None:
            self.set_run("finished_at", _when(event.finished_at) or timezone.now())
        self.entry(
            "finished",
            event="workflow_finished",
            status=self.run.status,
            at=_iso(_when(event.finished_at)),
        )
        # A node whose `node_finished` no stream of ours showed (cut short by a stop or the
        # failure, or done while no stream was open: a finished run's stream is its one
        # `workflow_finished`) would keep saying "running" under a run that has ended. In a run
        # that succeeded, it did too.
        ended = self.run.status if self.run.status in ("stopped", "failed") else "succeeded"
        for item in list(self.timeline):
            if (
                isinstance(item, dict)
                and str(item.get("key", "")).startswith("node:")
                and item.get("status") == "running"
            ):
                self.entry(str(item["key"]), status=ended)
        self.close_open_forms("the run ended")
        self.settle_timeline()

    def settle_timeline(self) -> None:
        """A form answered (through us, or elsewhere as our decision found) whose fill no stream
        of ours showed (the stream after the decision opened once the run had moved on or
        ended: a snapshot, or a finished run's one `workflow_finished`, replays no fill) would
        keep saying "waiting" on the timeline. Its
        answer goes right after its pause, as the fill would have put it; the fill, if a replay
        brings it later, lands on the same entry."""
        from inbox.models import Form

        for form in self.forms.values():
            key = f"form:{form.form_id}"
            index = self.timeline_index.get(key)
            if index is None or self.timeline[index].get("status") != "waiting":
                continue
            if form.status == Form.Status.EXPIRED:
                self.entry(key, status="expired")
                continue
            if form.status == Form.Status.ANSWERED_ELSEWHERE and not form.filled_action_id:
                # Answered in Dify (its console, an email), with which action we never learnt.
                self.entry(key, status="answered_elsewhere")
                continue
            if (
                form.status not in (Form.Status.SUBMITTED, Form.Status.ANSWERED_ELSEWHERE)
                or not form.filled_action_id
            ):
                continue
            self.entry(key, status="paused")
            answer = f"filled:{form.form_id}:{form.filled_action_id}"
            if answer in self.timeline_index:
                continue
            self.timeline.insert(
                index + 1,
                {
                    "key": answer,
                    "event": "human_input_form_filled",
                    "node_id": form.node_id,
                    "title": form.node_title or form.node_id,
                    "status": "answered",
                    "action": form.filled_action_text or form.filled_action_id,
                    "form": str(form.public_id),
                    "at": _iso(form.decided_at),
                },
            )
            self.timeline_index = {
                item.get("key"): i for i, item in enumerate(self.timeline) if isinstance(item, dict)
            }
            self.timeline_changed = True
            self.progress()

    def close_open_forms(self, reason: str) -> None:
        """Forms still open when their run ends can never be answered any more. A stream opened
        after the end carries only `workflow_finished`, not the fills before it, so what GET
        form answered (the caller asks it for each open form with a token, see
        `open_form_tokens`) tells a form answered in Dify from one that expired; Dify marks a
        form left waiting at the end as expired."""
        from inbox.models import AuditEntry, Form

        for form in self.forms.values():
            if form.status == Form.Status.NOT_ANSWERABLE:
                # Answerable only in Dify's own channels (an email, the console), and no token to
                # ask GET form with: a run that went on to succeed had it answered there, unless
                # its time ran out first; a run stopped or failed left it unanswered.
                answered = self.run.status == "succeeded" and not (
                    form.expiration_time is not None
                    and form.expiration_time <= (self.run.finished_at or timezone.now())
                )
                form.status = Form.Status.ANSWERED_ELSEWHERE if answered else Form.Status.EXPIRED
                form.save(update_fields=["status", "updated_at"])
                if answered:
                    self.evidence_wanted()
                AuditEntry.record(
                    f"form_{form.status}",
                    form,
                    previous=Form.Status.NOT_ANSWERABLE,
                    reason=f"the run ended ({self.run.status})",
                    source=self.source,
                )
                self.entry(f"form:{form.form_id}", status="answered" if answered else "expired")
                self.progress()
                continue
            if form.status != Form.Status.PENDING:
                continue
            previous = form.status
            checked = self.definitions.get(form.form_id)
            if isinstance(checked, DifyError) and not isinstance(
                checked, FormAlreadySubmitted | FormExpired | FormNotFound
            ):
                # GET form got no answer (Dify down or slow): whether someone answered the form
                # in Dify (the WebApp, an email link) before the end is not known, and "expired"
                # would be a final word that nothing corrects once the run has ended. It stays
                # pending, first in line for the reconcile of pending forms, whose GET form
                # settles it (412); failing that, the expiry sweep closes it at its expiration
                # time. A reviewer who decides it meanwhile gets Dify's answer from delivery.
                form.checked_at = None
                form.save(update_fields=["checked_at", "updated_at"])
                logger.warning(
                    "form %s: its run ended but GET form failed (%s): left to the reconcile",
                    form.pk,
                    type(checked).__name__,
                )
                continue
            if isinstance(checked, FormAlreadySubmitted):
                form.status = Form.Status.ANSWERED_ELSEWHERE
                why = f"GET form: {checked.code}"
                self.evidence_wanted()
            else:
                form.status = Form.Status.EXPIRED
                why = reason
            form.save(update_fields=["status", "updated_at"])
            AuditEntry.record(
                f"form_{form.status}", form, previous=previous, reason=why, source=self.source
            )
            label = "answered" if form.status == Form.Status.ANSWERED_ELSEWHERE else "expired"
            self.entry(f"form:{form.form_id}", status=label)
            self.progress()

    # --- the end of the batch ---

    def save(self) -> None:
        """Write what the batch changed on the run; called again, writes only what changed since."""
        from inbox.models import RunEvent

        if self.timeline_changed:
            if len(self.timeline) > TIMELINE_LIMIT:
                self.timeline = self.timeline[:1] + self.timeline[-(TIMELINE_LIMIT - 1) :]
            self.run.timeline = self.timeline
            self.run_fields.add("timeline")
            self.timeline_changed = False
        if self.run.status != self.initial_status:
            self.progress()
        if self.applied.events and not self.events_saved:
            self.run.last_event_at = timezone.now()
            self.run_fields.add("last_event_at")
            self.events_saved = True
        if self.run_fields:
            self.run.save(update_fields=[*self.run_fields, "updated_at"])
            self.run_fields = set()
        if self.stored:
            now = timezone.now()
            RunEvent.objects.bulk_create(
                [
                    RunEvent(run=self.run, event=name, key=key, payload=payload, received_at=now)
                    for name, key, payload in self.stored
                ],
                ignore_conflicts=True,
            )
            self.stored = []
        self.applied.status = self.run.status


def _set_definition(form: Form, definition: FormDefinition) -> list[str]:
    form.definition = definition.to_json()
    form.content = definition.form_content or form.content
    form.definition_fetched_at = timezone.now()
    fields = ["definition", "content", "definition_fetched_at"]
    expires = _when(definition.expiration_time)
    if expires is not None and expires != form.expiration_time:
        form.expiration_time = expires
        fields.append("expiration_time")
    return fields


def apply_events(
    run: Run,
    events: Iterable[Mapping[str, Any] | StreamEvent],
    *,
    definitions: Mapping[str, DefinitionResult] | None = None,
    source: str = "stream",
    handoff: DefinitionsHandoff | None = None,
    stream: StreamState | None = None,
) -> Applied:
    """Apply events in order, in one transaction under the run's row lock.

    `definitions` maps a form_id to what GET form answered for it (a FormDefinition, or the
    DifyError it raised), fetched by the caller before this transaction. `handoff` brings the
    answers of GETs still in flight for the forms it names: the batch is applied and written,
    then waits for them before the commit. `stream` is what the stream these events come from
    showed before them (see `StreamState`); it is brought up to date once the batch commits.
    """
    from inbox.models import AuditEntry

    state = stream.copy() if stream is not None else StreamState()
    with transaction.atomic(), AuditEntry.deferred():
        batch = _Batch(run, definitions, source, handoff, state)
        raws = [storable(event_dict(event)) for event in events]
        batch.announced = {
            fields.form_id
            for fields in pending_forms_in(
                r for r in raws if r.get("event") in ("human_input_required", "workflow_paused")
            )
            if fields.form_id
        }
        for raw in raws:
            batch.apply(raw)
        if batch.waiting:
            assert handoff is not None
            batch.save()
            batch.receive(handoff.wait())
        batch.save()
    if stream is not None:
        # Only a committed batch moves the stream on: one that failed is applied again.
        vars(stream).update(vars(state))
    return batch.applied


def store_definition(form_pk: int, result: DefinitionResult, *, source: str = "stream") -> None:
    """Record what GET form answered for a form, outside the batch that captured it: its
    definition, or (412) that Dify settled it: answered elsewhere or expired."""
    from inbox.models import AuditEntry, Form, Run

    run_pk = Form.objects.filter(pk=form_pk).values_list("run_id", flat=True).first()
    if run_pk is None:
        return
    with transaction.atomic():
        # The run first, as a batch locks it, so the two never deadlock.
        run = Run.objects.select_for_update().get(pk=run_pk)
        form = Form.objects.select_for_update().get(pk=form_pk)
        if isinstance(result, FormDefinition):
            form.save(update_fields=[*_set_definition(form, result), "updated_at"])
            return
        if isinstance(result, FormNotFound):
            logger.warning("form %s: Dify does not know its token (404)", form_pk)
            return
        if not isinstance(result, (FormAlreadySubmitted, FormExpired)):
            # An outage or an answer we cannot read settles nothing: reconcile asks again.
            logger.warning("form %s: GET form failed: %s", form_pk, type(result).__name__)
            return
        if form.status != Form.Status.PENDING:
            return  # a decision of ours is in flight, or it is settled already
        settled = isinstance(result, FormAlreadySubmitted)
        status = Form.Status.ANSWERED_ELSEWHERE if settled else Form.Status.EXPIRED
        form.status = status
        form.checked_at = timezone.now()
        form.save(update_fields=["status", "checked_at", "updated_at"])
        AuditEntry.record(
            f"form_{status}",
            form,
            previous="pending",
            reason=f"GET form: {result.code}",
            source=source,
        )
        timeline = list(run.timeline or [])
        for item in timeline:
            if isinstance(item, dict) and item.get("key") == f"form:{form.form_id}":
                item["status"] = "answered" if settled else "expired"
                run.timeline = timeline
                run.save(update_fields=["timeline", "updated_at"])
                break


def open_form_tokens(run: Run | int) -> dict[str, str]:
    """form_id -> token of the run's forms that are open here: asked about (GET form) before
    an end is applied, see `close_open_forms`."""
    from inbox.models import Form

    pk = run if isinstance(run, int) else run.pk
    return dict(
        Form.objects.filter(run_id=pk, status=Form.Status.PENDING)
        .exclude(form_token="")
        .values_list("form_id", "form_token")
    )


def check_forms(app: Any, wanted: Mapping[str, str]) -> dict[str, DefinitionResult]:
    """GET form for each form_id -> token (synchronously, outside any transaction), before an
    end is applied: Dify's answers, 412s included, and the error of a GET that got none (such
    a form is not closed on a guess, see `close_open_forms`)."""
    from inbox.dify.client import DifyClient

    client = DifyClient.for_app(app)
    found: dict[str, DefinitionResult] = {}
    for form_id, token in wanted.items():
        try:
            found[form_id] = client.get_form(token)
        except (FormAlreadySubmitted, FormExpired, FormNotFound) as exc:
            found[form_id] = exc
        except DifyError as exc:
            logger.info("form %s: GET form failed: %s", form_id, exc)
            found[form_id] = exc
    return found


def fetch_definitions(run: Run, wanted: Mapping[int, str]) -> None:
    """GET form for each form captured without its definition (synchronously, outside any
    transaction). Errors other than Dify's own answers leave the event's definition in place;
    the follower or the next replay tries again."""
    from inbox.dify.client import DifyClient

    client = DifyClient.for_app(run.app)
    for form_pk, token in wanted.items():
        try:
            result: DefinitionResult = client.get_form(token)
        except (FormAlreadySubmitted, FormExpired, FormNotFound) as exc:
            result = exc
        except DifyError as exc:
            logger.info("form %s: definition not fetched: %s", form_pk, exc)
            continue
        store_definition(form_pk, result)


def apply_run_detail(
    run: Run | int,
    detail: Any,
    *,
    source: str = "reconcile",
    checked: Mapping[str, DefinitionResult] | None = None,
) -> Applied:
    """What GET run detail says, for a run no stream of ours is reading. A finished run is
    closed as `workflow_finished` would close it (its open forms expire); Dify's final status
    wins over one we recorded (CONTRACT 7.12: some versions' events misreport it).

    `checked`: what GET form answered for the run's open forms (`open_form_tokens`), when the
    caller asked already (the follower, asynchronously); otherwise they are asked here."""
    from inbox.models import AuditEntry, Run

    pk = run if isinstance(run, int) else run.pk
    if not detail.is_finished:
        with transaction.atomic():
            locked = Run.objects.select_for_update().get(pk=pk)
            if detail.status in ("paused", "running") and locked.status == "starting":
                locked.status = detail.status
                locked.save(update_fields=["status", "updated_at"])
            elif detail.status == "paused" and locked.status == "running":
                locked.status = "paused"
                locked.save(update_fields=["status", "updated_at"])
            return Applied(status=locked.status, paused=locked.status == "paused")
    event = {
        "event": "workflow_finished",
        "workflow_run_id": detail.id,
        "data": {
            "id": detail.id,
            "workflow_id": detail.workflow_id,
            "status": detail.status,
            "outputs": detail.outputs,
            "error": detail.error,
            "elapsed_time": detail.elapsed_time,
            "total_tokens": detail.total_tokens,
            "total_steps": detail.total_steps,
            "created_at": detail.created_at,
            "finished_at": detail.finished_at,
        },
    }
    if checked is None:
        app = (
            run.app
            if not isinstance(run, int)
            else Run.objects.select_related("app").get(pk=pk).app
        )
        checked = check_forms(app, open_form_tokens(pk))
    applied = apply_events(Run(pk=pk), [event], definitions=checked, source=source)
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=pk)
        if locked.status != detail.status:
            previous = locked.status
            locked.status = detail.status
            locked.save(update_fields=["status", "updated_at"])
            AuditEntry.record(
                "run_status_corrected",
                locked,
                previous=previous,
                status=detail.status,
                source=source,
            )
            applied.changed = True
        applied.status = locked.status
    return applied


def record_ingested_form(
    run: Run,
    token: str,
    definition: FormDefinition,
    announced: HumanInputFields | None = None,
) -> Form | None:
    """A form brought by its token (an ingest): GET form gives its content but not its form_id
    or node. `announced`: the run's pending form it is (`same_form`), as the run's state
    snapshot replayed it; the form is then recorded under Dify's form_id, node and title,
    routed by its node at once. Without it (Dify does not show the run's events to the
    caller) it is stored under a key derived from the token, so the same token twice is one
    form, and the first announcement of a form with the same content in this run gives it its
    real id (`adopt_placeholder`). None when the form is another record's already (the same
    Dify form held by another run: never moved)."""
    from inbox.models import AuditEntry, Form

    if announced is not None and announced.form_id:
        form_id = announced.form_id[:64]
        node = {
            "node_id": announced.node_id[:128],
            "node_title": announced.node_title[:255],
            "approval_channels": list(announced.approval_channels),
        }
    else:
        form_id = INGEST_FORM_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:40]
        node = {"node_id": ""}
    form, created = Form.objects.get_or_create(
        form_id=form_id,
        defaults={
            "run": run,
            "form_token": token,
            **node,
            "content": definition.form_content,
            "definition": definition.to_json(),
            "definition_fetched_at": timezone.now(),
            "expiration_time": _when(definition.expiration_time),
            "status": Form.Status.PENDING,
        },
    )
    if form.run_id != run.pk:
        return None
    if created:
        AuditEntry.record("form_captured", form, source="ingest", definition="get")
    return form
