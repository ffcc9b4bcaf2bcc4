// Small enhancements on top of pages that work without script: time zone, live relative
// times, keyboard moves in the inbox, upload progress, holding the action buttons (and saying
// what is missing) until Dify would accept the form, saying why when the server refuses a
// request, holding a reload that would lose what was typed, and carrying what was typed (and
// the inbox's place) across a language switch.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Tell the server the reviewer's time zone so times render in it.
  try {
    var tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (tz && document.cookie.indexOf("tz=" + tz) === -1) {
      document.cookie = "tz=" + tz + ";path=/;max-age=31536000;samesite=lax";
    }
  } catch (e) { /* old browsers keep the server default */ }

  function announce(message) {
    var region = document.getElementById("announcer");
    if (!region || !message) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = message; }, 50);
  }

  // --- Filters: only what is chosen goes in the address ---------------------------------------
  // A list's filters are sent as the page's form would send them, less the empty ones, so the
  // address it keeps reads "?state=open", not "?q=&state=open".
  document.addEventListener("htmx:configRequest", function (evt) {
    var source = evt.detail.elt;
    var form = source && source.closest ? source.closest("form.filters") : null;
    if (!form || (evt.detail.verb || "").toLowerCase() !== "get") return;
    var data = evt.detail.formData;
    if (!data || !data.keys) return;
    var empty = [];
    data.forEach(function (value, key) { if (value === "") empty.push(key); });
    empty.forEach(function (key) {
      if (data.getAll(key).every(function (value) { return value === ""; })) data.delete(key);
    });
  });

  // --- A decision's post waits so long for its answer ---------------------------------------
  // A post stalled on a dead connection (a phone's link gone mid-request) could wait minutes
  // with nothing said: past the form's limit it counts as lost (htmx:timeout, below) and is
  // sent again under the same key. Only the decision: an upload on a slow link takes longer.
  document.addEventListener("htmx:configRequest", function (evt) {
    var form = evt.detail.elt;
    if (!form || form.id !== "decision-form" || (evt.detail.verb || "").toLowerCase() === "get") return;
    var limit = parseInt(form.getAttribute("data-answer-timeout") || "", 10);
    if (limit > 0) evt.detail.timeout = limit;
  });

  // --- Relative times, refreshed in the page's language -------------------------------------
  var lang = document.documentElement.lang || "en";
  var rtf = null;
  try { rtf = new Intl.RelativeTimeFormat(lang === "zh-hans" ? "zh-Hans" : lang, { numeric: "always" }); } catch (e) { rtf = null; }

  function relative(date) {
    var seconds = (date.getTime() - Date.now()) / 1000;
    var abs = Math.abs(seconds);
    // Within a minute, the server's words (as timefmt.relative says them).
    if (abs < 60) return document.body.getAttribute(seconds > 0 ? "data-soon" : "data-just-now");
    // As the server words it (timefmt.relative): the largest unit of which there are at
    // least two, rounded to the nearest.
    var units = [[86400, "day"], [3600, "hour"], [60, "minute"]];
    for (var i = 0; i < units.length; i++) {
      if (abs >= 2 * units[i][0] || units[i][1] === "minute") {
        var n = Math.round(abs / units[i][0]);
        return rtf.format(seconds < 0 ? -n : n, units[i][1]);
      }
    }
    return null;
  }

  function refreshTimes(root) {
    if (!rtf) return;
    (root || document).querySelectorAll("time[data-rel]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date)) return;
      var text = relative(date);
      if (text) el.textContent = text;
    });
    (root || document).querySelectorAll("[data-expires]").forEach(function (el) {
      var left = (new Date(el.getAttribute("data-expires")).getTime() - Date.now()) / 1000;
      el.classList.toggle("urgent", left > 0 && left <= 3600);
    });
  }
  window.setInterval(refreshTimes, 30000);

  // --- The top bar: sticky on a large screen, scrolled away with the page on a phone ----------
  // What the browser scrolls to (a focused field, a row moved to, a row revealed below) stops
  // below the bar while it stays on the screen: its height as drawn, which wraps on some screens.
  function stickyBar() {
    var bar = document.querySelector(".topbar");
    return bar && window.getComputedStyle(bar).position === "sticky" ? bar : null;
  }

  // How much of the window's top the bar covers.
  function topInset() {
    var bar = stickyBar();
    return bar ? Math.max(0, bar.getBoundingClientRect().bottom) : 0;
  }

  function fitScrollPadding() {
    var bar = stickyBar();
    document.documentElement.style.scrollPaddingTop = bar ? Math.ceil(bar.getBoundingClientRect().height) + 8 + "px" : "0px";
  }

  // Brings `el` on the screen if it is not (below the bar), by as little as it takes.
  function reveal(el, around) {
    if (!el) return;
    var inset = topInset();
    var box = el.getBoundingClientRect();
    if (box.top >= inset && box.bottom <= window.innerHeight) return;
    // With what is just above it (the list's tabs, a form's heading) when both fit.
    var top = around ? around.getBoundingClientRect().top : box.top;
    if (around && box.bottom - top <= window.innerHeight - inset) around.scrollIntoView({ block: "start" });
    else el.scrollIntoView({ block: "nearest" });
  }

  // --- The inbox's status tabs: the edge they run past fades, the one shown is on the screen --
  function fitTabs(tabs, showActive) {
    if (!tabs) return;
    var active = showActive && tabs.querySelector(".tab.active");
    if (active) {
      var edge = 48; // the fade's width: a tab under it is not quite shown
      var box = tabs.getBoundingClientRect();
      var tab = active.getBoundingClientRect();
      if (tab.right > box.right - edge) tabs.scrollLeft += tab.right - box.right + edge;
      else if (tab.left < box.left + edge) tabs.scrollLeft -= box.left + edge - tab.left;
    }
    var end = tabs.scrollWidth - tabs.clientWidth;
    tabs.classList.toggle("more-before", tabs.scrollLeft > 1);
    tabs.classList.toggle("more-after", tabs.scrollLeft < end - 1);
  }

  // Redrawn (a poll, the counts coming in): the tabs stay scrolled as the reader left them,
  // unless another tab is now the one shown.
  var tabsWas = null;
  function activeTabIndex(tabs) {
    return Array.prototype.indexOf.call(tabs.querySelectorAll(".tab"), tabs.querySelector(".tab.active"));
  }
  document.addEventListener("htmx:beforeSwap", function () {
    var tabs = document.getElementById("tabs");
    tabsWas = tabs ? { tabs: tabs, left: tabs.scrollLeft, active: activeTabIndex(tabs) } : null;
  });
  document.addEventListener("htmx:afterSettle", function () {
    var tabs = document.getElementById("tabs");
    if (!tabs) return;
    var was = tabsWas;
    if (was && was.tabs === tabs) { fitTabs(tabs, false); return; } // not redrawn
    tabsWas = null;
    if (was && was.active === activeTabIndex(tabs)) {
      tabs.scrollLeft = was.left;
      fitTabs(tabs, false);
    } else {
      fitTabs(tabs, true);
    }
  });
  document.addEventListener("scroll", function (event) {
    if (event.target && event.target.id === "tabs") fitTabs(event.target, false);
  }, true);
  window.addEventListener("resize", function () {
    fitScrollPadding();
    fitTabs(document.getElementById("tabs"), false);
  });

  // --- Inbox: j / k / Enter / "/" ---------------------------------------------------------
  // Single keys act anywhere on the page, which a speech input user or one who types in a
  // screen reader's browse mode may set off by mistake: they can be turned off (the switch
  // beside the hint, remembered in this browser), and say where they apply
  // (aria-keyshortcuts) only while on.
  var SHORTCUTS_KEY = "inbox:shortcuts";
  var selectedId = null;

  function shortcutsOn() {
    try { return window.localStorage.getItem(SHORTCUTS_KEY) !== "off"; } catch (e) { return true; }
  }

  function applyShortcuts() {
    var on = shortcutsOn();
    var toggle = document.getElementById("shortcuts-toggle");
    if (toggle) {
      toggle.checked = on;
      var box = toggle.closest(".shortcuts");
      if (box) box.hidden = false;
    }
    var hint = document.getElementById("shortcuts-hint");
    if (hint) hint.hidden = !on;
    function mark(el, keys) {
      if (on) el.setAttribute("aria-keyshortcuts", keys);
      else el.removeAttribute("aria-keyshortcuts");
    }
    var q = document.getElementById("q");
    if (q && toggle) mark(q, "/");
    if (toggle) document.querySelectorAll("#rows .row a.open").forEach(function (link) { mark(link, "J K"); });
  }

  document.addEventListener("change", function (event) {
    if (!event.target || event.target.id !== "shortcuts-toggle") return;
    try {
      if (event.target.checked) window.localStorage.removeItem(SHORTCUTS_KEY);
      else window.localStorage.setItem(SHORTCUTS_KEY, "off");
    } catch (e) { /* not remembered: the switch holds for this page */ }
    applyShortcuts();
  });
  document.addEventListener("htmx:afterSettle", applyShortcuts);

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#rows .row")); }

  function select(row, focus) {
    rows().forEach(function (r) { r.classList.remove("selected"); });
    if (!row) return;
    row.classList.add("selected");
    selectedId = row.getAttribute("data-id");
    if (focus) {
      var link = row.querySelector("a.open");
      if (link) link.focus();
      row.scrollIntoView({ block: "nearest" });
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    var typing = target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
    if (typing) {
      // Out of the search, back to the list it filters: the row chosen, else the first.
      if (event.key === "Escape" && target.id === "q") {
        var back = document.querySelector("#rows .row.selected a.open") || document.querySelector("#rows .row a.open");
        var empty = document.querySelector("#results .empty-title");
        if (back || empty) {
          event.preventDefault();
          if (back) select(back.closest(".row"), true);
          else focusOn(empty);
        }
      }
      return;
    }
    if (!shortcutsOn() || document.getElementById("shortcuts-toggle") === null) return;
    var list = rows();
    if (event.key === "/") {
      var q = document.getElementById("q");
      if (q) { event.preventDefault(); q.focus(); q.select(); }
      return;
    }
    if (!list.length || (event.key !== "j" && event.key !== "k")) return;
    event.preventDefault();
    var index = list.findIndex(function (r) { return r.classList.contains("selected"); });
    if (index === -1) index = event.key === "j" ? 0 : list.length - 1;
    else index = Math.max(0, Math.min(list.length - 1, index + (event.key === "j" ? 1 : -1)));
    select(list[index], true);
  });

  document.addEventListener("focusin", function (event) {
    var row = event.target.closest && event.target.closest("#rows .row");
    if (row) select(row, false);
  });

  // --- Forms: enable the actions only when Dify would accept the form -----------------------
  var pageStale = false; // the page can no longer send its form (below)

  function uploadsBusy(form) {
    return form.querySelector(".field[data-uploading]") !== null;
  }

  function fieldReady(field) {
    var kind = field.getAttribute("data-kind");
    if (kind === "select") {
      var checked = field.querySelector("input[type=radio]:checked");
      var select = field.querySelector("select, input[type=text]");
      return !!checked || (!!select && select.value.trim() !== "");
    }
    if (kind === "file") {
      var chips = field.querySelectorAll(".file-chip").length;
      var url = field.querySelector(".url-input");
      return chips > 0 || (!!url && url.value.trim() !== "");
    }
    return true;
  }

  // Chinese characters and the full-width punctuation beside them (inbox.reasons._CJK).
  var CJK = /[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]/;
  var CJK_BEFORE = /([\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]) \{fields\}/;
  var CJK_AFTER = /\{fields\} ([\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef])/;

  // The hint under the actions names what is missing, by the fields' labels, in the page's
  // words (its data-* attributes).
  function hintText(hint, missing, tooMany, busy) {
    var separator = hint.getAttribute("data-separator") || ", ";
    function words(attribute, labels) {
      var list = labels.join(separator);
      var text = hint.getAttribute(attribute) || "{fields}";
      if (/^zh/i.test(document.documentElement.lang || "")) {
        // As the server words Chinese: no space between the labels and Chinese beside them
        // when the labels are Chinese too ("附件中的文件过多"), one when they are Latin.
        if (CJK.test(list.charAt(0))) text = text.replace(CJK_BEFORE, "$1{fields}");
        if (CJK.test(list.charAt(list.length - 1))) text = text.replace(CJK_AFTER, "{fields}$1");
      }
      return text.replace("{fields}", function () { return list; });
    }
    var parts = [];
    if (missing.length) parts.push(words("data-missing", missing));
    if (tooMany.length) parts.push(words("data-too-many", tooMany));
    if (busy) parts.push(hint.getAttribute("data-uploading") || "");
    return parts.join(" ");
  }

  // Not `disabled`: a disabled button is skipped by Tab, and its reason never heard. The buttons
  // stay reachable, say they are unavailable (aria-disabled) and why (aria-describedby: the
  // hint, or the reload notice), and their click is refused below.
  function refreshActions() {
    var form = document.getElementById("decision-form");
    if (!form) return;
    var busy = uploadsBusy(form);
    var missing = [];
    var tooMany = [];
    form.querySelectorAll(".field[data-required]").forEach(function (field) {
      if (!fieldReady(field)) missing.push(field.getAttribute("data-label") || field.getAttribute("data-name") || "");
    });
    form.querySelectorAll(".field[data-kind=file-list]").forEach(function (field) {
      var list = field.querySelector(".file-chips");
      var max = list ? parseInt(list.getAttribute("data-max"), 10) : 0;
      var count = field.querySelectorAll(".file-chip").length;
      var picker = field.querySelector(".file-pick");
      var full = max > 0 && count >= max;
      if (picker && full && !picker.hidden && picker.contains(document.activeElement)) {
        // The list just filled while its picker had the focus: hidden, the picker would drop
        // it to the page's start. The last file's Remove button takes it, else the list.
        picker.hidden = true;
        var removes = field.querySelectorAll(".file-chip .remove");
        if (!focusOn(removes[removes.length - 1])) focusOn(list);
      }
      if (picker) picker.hidden = full;
      if (max > 0 && count > max) tooMany.push(field.getAttribute("data-label") || field.getAttribute("data-name") || "");
    });
    var ready = !busy && !pageStale && !missing.length && !tooMany.length;
    var hint = form.querySelector(".actions-hint");
    if (hint) {
      hint.hidden = ready || pageStale; // the reload notice says why instead
      var text = ready || pageStale ? "" : hintText(hint, missing, tooMany, busy);
      if (text && hint.textContent !== text) hint.textContent = text;
    }
    var reason = pageStale ? document.getElementById("reload-notice-text") : hint;
    form.querySelectorAll(".actions button[name=action]").forEach(function (button) {
      if (ready) {
        button.removeAttribute("aria-disabled");
        button.removeAttribute("aria-describedby");
      } else {
        button.setAttribute("aria-disabled", "true");
        if (reason && reason.id) button.setAttribute("aria-describedby", reason.id);
      }
    });
  }

  function refusedAction(target) {
    var button = target && target.closest && target.closest("#decision-form .actions button[name=action]");
    return button && button.getAttribute("aria-disabled") === "true" ? button : null;
  }

  // A press on a button that waits (by mouse, key, or Enter in a field of the form) sends
  // nothing: the hint is read out instead. Captured before htmx sees the form's submit.
  document.addEventListener("click", function (event) {
    if (!refusedAction(event.target)) return;
    event.preventDefault();
    event.stopPropagation();
    var hint = document.querySelector("#decision-form .actions-hint");
    if (hint && !hint.hidden) announce(hint.textContent.trim());
  }, true);

  document.addEventListener("submit", function (event) {
    if (!event.target || event.target.id !== "decision-form" || !refusedAction(event.submitter)) return;
    event.preventDefault();
    event.stopPropagation();
  }, true);

  // Another app: the node chosen belongs to the one before, so it is let go before the list is
  // asked again (this runs first, in the capture phase), and the node choices are fetched for
  // the new app (the select's `change from:#f-app` trigger).
  document.addEventListener("change", function (event) {
    if (!event.target || event.target.id !== "f-app") return;
    var node = document.getElementById("f-node");
    if (!node) return;
    node.value = "";
    Array.prototype.slice.call(node.options).forEach(function (option) {
      if (option.value) option.remove();
    });
  }, true);

  // Back or forward to a filtered list: htmx restores the page as it was drawn, with each
  // select showing what the server marked selected then; the address says what was chosen.
  document.addEventListener("htmx:historyRestore", function () {
    var params = new URLSearchParams(window.location.search);
    document.querySelectorAll("form.filters select[name]").forEach(function (select) {
      var value = params.get(select.name) || "";
      if (Array.prototype.some.call(select.options, function (o) { return o.value === value; })) select.value = value;
    });
  });

  document.addEventListener("input", refreshActions);
  document.addEventListener("change", refreshActions);

  // --- Uploads: progress bar while the file travels, input reset afterwards -----------------
  function uploadParts(elt) {
    var name = elt && elt.getAttribute && elt.getAttribute("data-upload");
    if (!name) return null;
    return {
      name: name,
      field: elt.closest(".field"),
      progress: document.getElementById("progress-" + name),
      error: document.getElementById("file-error-" + name),
    };
  }

  // The same limit the server applies: by the file's extension, the app's limits in the page.
  function megabytes(size) {
    return String(Number((size / (1024 * 1024)).toPrecision(6))) + " MB";
  }

  function tooLarge(input, error) {
    var limits = null;
    try { limits = JSON.parse(input.getAttribute("data-size-limits") || "null"); } catch (e) { limits = null; }
    if (!limits || !input.files) return [];
    var template = (error && error.getAttribute("data-larger-than")) || "{limit}";
    // "big.png: …", with the page's language's colon ("big.png：…" in Chinese).
    var labelled = (error && error.getAttribute("data-labelled")) || "{label}: {message}";
    var found = [];
    Array.prototype.forEach.call(input.files, function (file) {
      var match = /[^/\\.]\.([^./\\]+)$/.exec(file.name);
      var ext = match ? match[1].toLowerCase() : "";
      var limit = (ext && limits.ext[ext]) || limits["default"];
      if (!limit || file.size <= limit) return;
      var message = template.replace("{limit}", megabytes(limit));
      found.push(labelled.replace(/\{(label|message)\}/g, function (whole, part) {
        return part === "label" ? file.name : message;
      }));
    });
    return found;
  }

  // A file list takes so many files: more picked than it has room for are refused before
  // sending (the server would add only those it has room for).
  function tooMany(input, parts) {
    var list = parts.field && parts.field.querySelector(".file-chips");
    var max = list ? parseInt(list.getAttribute("data-max"), 10) : 0;
    if (!max || !input.files || parts.field.getAttribute("data-kind") !== "file-list") return [];
    var count = parts.field.querySelectorAll(".file-chip").length;
    if (count + input.files.length <= max) return [];
    // Nothing on the list yet: there is nothing to remove, only fewer to pick. Room left for
    // fewer than were picked: how many more it takes. A full list: remove one first.
    var room = max - count;
    var words = count ? "data-too-many" : "data-too-many-picked";
    if (count && room > 0) words = room === 1 ? "data-room-one" : "data-room";
    var text = (parts.error && parts.error.getAttribute(words)) || "";
    return [text.replace("{room}", String(room))];
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var parts = uploadParts(event.detail.elt);
    if (!parts) return;
    if (parts.error) parts.error.textContent = "";
    var refused = tooLarge(event.detail.elt, parts.error).concat(tooMany(event.detail.elt, parts));
    if (refused.length) {
      // Refused before sending, in the words the server would use: read out by the alert
      // alone (its words arrive a moment after it was emptied, so the same words are read
      // again), not by the announcer too.
      event.preventDefault();
      var error = parts.error;
      if (error) window.setTimeout(function () { error.textContent = refused.join(" "); }, 50);
      event.detail.elt.value = "";
      return;
    }
    if (parts.field) parts.field.setAttribute("data-uploading", "");
    if (parts.progress) { parts.progress.hidden = false; parts.progress.value = 0; }
    refreshActions();
  });

  document.addEventListener("htmx:xhr:progress", function (event) {
    var parts = uploadParts(event.detail.elt);
    if (!parts || !parts.progress || !event.detail.lengthComputable) return;
    parts.progress.value = Math.round((event.detail.loaded / event.detail.total) * 100);
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var parts = uploadParts(event.detail.elt);
    // No answer at all (htmx leaves `failed` unset then).
    var lostOnTheWay = !event.detail.successful && event.detail.xhr.status === 0;
    if (parts) {
      if (parts.field) parts.field.removeAttribute("data-uploading");
      if (parts.progress) parts.progress.hidden = true;
      // The files never reached the server: the field says which, before the input forgets
      // them (picked again, the same file must set the input off anew).
      if (lostOnTheWay && !pageStale) uploadLost(event.detail.elt, parts);
      event.detail.elt.value = "";
    }
    // The toast is the poll's: the page's own asking again. What the reader sent and lost says
    // so itself (below), and stays; any answer from the server says the connection is back.
    var toast = document.getElementById("connection-error");
    if (toast && verb(event) === "get") toast.hidden = pageStale || !lostOnTheWay;
    else if (toast && !lostOnTheWay) toast.hidden = true;
    refreshActions();
  });

  // Lost on the way: no answer at all. Chromium's XHR ends a post whose connection timed out
  // (net::ERR_TIMED_OUT, or the decision's own time limit below) with a `timeout`, for which
  // htmx fires htmx:timeout, not htmx:sendError: the same loss.
  function requestLost(event) {
    if (verb(event) === "get") {
      var toast = document.getElementById("connection-error");
      if (toast && !pageStale) toast.hidden = false;
    } else if (!uploadParts(event.detail.elt)) {
      notSent(event, event.type === "htmx:timeout");
    }
    // Nothing is swapped: the button pressed (disabled while the request was out) gets the
    // focus back, as after a refused answer, and the notice is read out.
    window.setTimeout(function () { restoreFocus(false); }, 0);
  }
  ["htmx:sendError", "htmx:timeout"].forEach(function (name) {
    document.addEventListener(name, requestLost);
  });

  function uploadLost(input, parts) {
    var error = parts.error;
    if (!error) return;
    var names = Array.prototype.map.call(input.files || [], function (file) { return file.name; });
    // Several files picked at once (a file list): "Choose the files again".
    var message = (names.length > 1 && error.getAttribute("data-upload-lost-many")) || error.getAttribute("data-upload-lost") || "";
    var hint = document.getElementById("actions-hint");
    var separator = (hint && hint.getAttribute("data-separator")) || ", ";
    var labelled = error.getAttribute("data-labelled") || "{label}: {message}";
    var words = names.length ? labelled.replace(/\{(label|message)\}/g, function (whole, part) {
      return part === "label" ? names.join(separator) : message;
    }) : message;
    // After the alert was emptied (at the upload's start), so it is read out.
    window.setTimeout(function () { error.textContent = words; }, 50);
  }

  // --- What the reader sent that never reached the server ------------------------------------
  // A post lost on the way (the connection dropped: no answer at all) was not received: the
  // page says so in the error alert, which stays until the reader acts (the poll's own toast
  // comes and goes with the connection). A decision is sent again by itself once the
  // connection is back: its submission key makes a second post of the same page count once,
  // also when the first did arrive and only its answer was lost. What the reader typed stays
  // in the form; if they change it meanwhile, it waits for their tap instead.
  // A decision answered 502, 503 or 504 (the server, or the proxy in front of it, unavailable
  // for the moment: the database down, a restart) was not taken, or may have been: it is sent
  // again the same way, not before the answer's Retry-After (else the same back-off), and only
  // once the page's poll gets an answer again. A 500 is a fault of the server's own, not a
  // moment's absence: sending the same again would likely fail the same way, and the decision
  // may even be stored (the poll then shows it taken), so the alert says to try again and
  // stays, and the reader's tap sends it (under the same key, so it still counts once).
  // Changed while a resend waits (or while it is out), it is not sent by itself any more: sent
  // at a moment the reader does not choose (the next poll), it could carry a note half typed, or
  // a choice they were still making, under the action they pressed for what was there before.
  // The alert says why it stopped, in the words of what happened to it (EDITED), and their tap
  // sends what they see then (a page sent twice under one key that chose otherwise is refused,
  // said, and what was typed kept, should the first have arrived after all).
  var resend = null; // { action, delay, timer, sending, untilPoll, notBefore, words, status, edited }
  var notSentShown = ""; // the words showNotSent put in the alert
  var UNAVAILABLE = [502, 503, 504];
  var EDITED = {
    "data-resending": "data-not-sent",
    "data-no-answer": "data-no-answer-edited",
    "data-unavailable": "data-unavailable-edited",
  };

  function notSentWords(key) {
    var box = document.getElementById("request-error");
    return (box && box.getAttribute(key)) || "";
  }

  function showNotSent(key, status) {
    var words = notSentWords(key).replace("{status}", String(status || ""));
    var box = document.getElementById("request-error");
    // Each failed try of the same resend says it once, not again.
    if (!words || (box && !box.hidden && errorShown === words)) return;
    showError([document.createTextNode(words)], false);
    notSentShown = words;
  }

  function hideNotSent() {
    var box = document.getElementById("request-error");
    if (!box || box.hidden) return;
    if (notSentShown && errorShown === notSentShown) hideError();
  }

  function postedAction(event) {
    var config = event.detail.requestConfig;
    var data = config && config.formData;
    var action = data && data.get ? data.get("action") : null;
    return typeof action === "string" ? action : "";
  }

  // `timedOut`: no answer in time, the post may have arrived: the page says it could not tell.
  function notSent(event, timedOut) {
    if (pageStale) return;
    var elt = event.detail.elt;
    var action = elt && elt.id === "decision-form" ? postedAction(event) : "";
    if (!action) {
      showNotSent("data-not-sent");
      return;
    }
    var words = timedOut ? "data-no-answer" : "data-resending";
    if (editedMeanwhile()) return stopResend(words);
    var delay = nextDelay(action);
    cancelResend();
    resend = { action: action, delay: delay, timer: window.setTimeout(sendAgain, delay), sending: false, words: words };
    showNotSent(words);
  }

  // The resend that just failed was changed while it was out: it is not sent again by itself.
  function editedMeanwhile() {
    return !!resend && !!resend.edited;
  }

  // Waits for the reader's tap from now on: the alert says what happened to the decision, and
  // that it stopped because they changed the form.
  function stopResend(words, status) {
    cancelResend();
    showNotSent(EDITED[words] || "data-not-sent", status);
    return true;
  }

  function nextDelay(action) {
    return resend && resend.action === action ? Math.min(resend.delay * 2, 30000) : 2000;
  }

  // A decision answered 502, 503 or 504: sent again once the poll gets through, after the
  // answer's Retry-After (at most a minute: the poll says when the server is back) or the
  // back-off.
  function serverUnavailable(event) {
    var elt = event.detail.elt;
    var xhr = event.detail.xhr;
    var action = elt && elt.id === "decision-form" ? postedAction(event) : "";
    if (pageStale || !action || UNAVAILABLE.indexOf(xhr.status) === -1) return false;
    window.setTimeout(function () { restoreFocus(false); }, 0);
    if (editedMeanwhile()) return stopResend("data-unavailable", xhr.status);
    var delay = nextDelay(action);
    var wait = parseInt(xhr.getResponseHeader("Retry-After") || "", 10);
    wait = wait > 0 ? Math.min(wait * 1000, 60000) : delay;
    cancelResend();
    resend = {
      action: action, delay: delay, timer: null, sending: false, untilPoll: true, notBefore: Date.now() + wait,
      words: "data-unavailable", status: xhr.status,
    };
    showNotSent("data-unavailable", xhr.status);
    return true;
  }

  function cancelResend() {
    if (resend) window.clearTimeout(resend.timer);
    resend = null;
  }

  function sendAgain() {
    var wanted = resend;
    if (!wanted || wanted.sending) return;
    window.clearTimeout(wanted.timer);
    var form = document.getElementById("decision-form");
    var button = form && form.querySelector('.actions button[name=action][value="' + CSS.escape(wanted.action) + '"]');
    if (!button || pageStale) {
      // The form closed meanwhile (the decision did arrive, or someone else's): the page says
      // what happened to it now.
      cancelResend();
      hideNotSent();
      return;
    }
    if (button.disabled) { // a request of the form's is out (every action waits meanwhile): after it
      wanted.timer = window.setTimeout(sendAgain, 1000);
      return;
    }
    wanted.sending = true;
    button.click(); // as the reader's tap: the same form, the same key
    window.setTimeout(function () {
      // Not sent after all (the form waits for an upload): tried again later.
      if (resend === wanted && wanted.sending && !wanted.started) {
        wanted.sending = false;
        if (wanted.edited) { stopResend(wanted.words, wanted.status); return; }
        wanted.timer = window.setTimeout(sendAgain, wanted.delay);
      }
    }, 0);
  }

  // While a decision is out every action waits (hx-disabled-elt); the one pressed says it is
  // busy, until the answer comes or the post is lost.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var form = event.detail.elt;
    if (!form || form.id !== "decision-form" || verb(event) === "get") return;
    var trigger = event.detail.requestConfig && event.detail.requestConfig.triggeringEvent;
    var button = trigger && trigger.submitter;
    if (!button || button.name !== "action") {
      button = form.querySelector('.actions button[name=action][value="' + CSS.escape(postedAction(event)) + '"]');
    }
    if (button) button.setAttribute("aria-busy", "true");
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail.elt;
    if (!form || form.id !== "decision-form" || !form.querySelectorAll) return;
    form.querySelectorAll("button[aria-busy]").forEach(function (button) { button.removeAttribute("aria-busy"); });
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    if (!resend || verb(event) === "get" || !event.detail.elt || event.detail.elt.id !== "decision-form") return;
    if (resend.sending) resend.started = true;
    else cancelResend(); // the reader pressed again themselves
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    if (!resend || resend.sending || verb(event) !== "get") return;
    // The poll got through: the connection is back. After a 5xx, answered as it should be
    // (not the same 503 again), and the server's wait over.
    if (resend.untilPoll ? !event.detail.successful || Date.now() < resend.notBefore : event.detail.xhr.status === 0) return;
    sendAgain();
  });

  // Answered (before the answer replaces the form, and its events with it): the answer says
  // what became of the decision.
  document.addEventListener("htmx:beforeOnLoad", function (event) {
    var elt = event.detail.elt;
    if (!resend || verb(event) === "get" || !elt || elt.id !== "decision-form") return;
    // Unavailable again: sent again later, waiting longer (serverUnavailable, below).
    if (UNAVAILABLE.indexOf(event.detail.xhr.status) !== -1) return;
    cancelResend();
    if (event.detail.xhr.status < 400) hideNotSent();
  });

  window.addEventListener("online", function () { if (resend && !resend.sending && !resend.untilPoll) sendAgain(); });

  // Changed after it was lost: sent when the reader says, with what they have now. Changed while
  // the resend is out: its answer says what became of it; if it failed again, not sent again
  // by itself (notSent, serverUnavailable).
  function editedWhileWaiting(event) {
    if (!resend || !event.target.closest || !event.target.closest("#decision-form")) return;
    if (resend.sending) {
      resend.edited = true;
      return;
    }
    stopResend(resend.words, resend.status);
  }
  document.addEventListener("input", editedWhileWaiting);
  document.addEventListener("change", editedWhileWaiting);

  // --- The form moved on: what was said about sending to it gives way -----------------------
  // The page's poll redraws the body once the form is no longer open: decided (this page's
  // decision after all, say one a 500 answered once it was stored, or someone else's),
  // expired, answered elsewhere. An alert about what the reader sent ("try again", "sending it
  // again…") would then invite them to send what can no longer be sent: its place is taken by
  // what the body now says (data-settled: decided, by whom and with what; else the form's
  // status), and a resend still waiting is dropped. A resend out meanwhile is answered itself.
  var settledShown = ""; // the words formMovedOn put in the alert

  function formMovedOn() {
    var body = document.getElementById("form-body");
    var words = body && body.getAttribute("data-settled");
    if (document.getElementById("decision-form")) {
      // Open again (Dify refused the decision): what the alert said of it is over.
      if (settledShown && errorShown === settledShown) hideError();
      settledShown = "";
      return;
    }
    if (!words || (resend && resend.sending)) return;
    var waiting = !!resend;
    cancelResend();
    var box = document.getElementById("request-error");
    if (!box || (box.hidden && !waiting) || (!box.hidden && errorFromPoll)) return;
    if (!box.hidden && errorShown === words) return; // said already (each swapped part tells)
    showError([document.createTextNode(words)], false);
    settledShown = words;
  }
  document.addEventListener("htmx:oobAfterSwap", function (event) {
    if (event.target && event.target.id === "form-body") formMovedOn();
  });

  // --- Error answers: say what happened, and keep what was typed ----------------------------
  // htmx swaps nothing of a 4xx or 5xx answer: the button would just come back. An answer that
  // names its place (HX-Retarget) is swapped there: a guest link's refusal replaces the page's
  // content, a message goes to the error alert. Any other answer (a 500, a proxy's 502) gets
  // the page's words for its status in the alert, and the page stays as it was.
  var errorFromPoll = false;
  var errorShown = "";
  var typed = [];

  function verb(event) {
    var config = event.detail.requestConfig;
    return config && config.verb ? config.verb.toLowerCase() : "get";
  }

  function hideError() {
    var box = document.getElementById("request-error");
    if (box) box.hidden = true;
  }

  function postAlertShown() {
    var box = document.getElementById("request-error");
    return !!box && !box.hidden && !errorFromPoll;
  }

  function showError(nodes, fromGet) {
    var box = document.getElementById("request-error");
    var text = document.getElementById("request-error-text");
    if (!box || !text || pageStale) return;
    // What the page's poll meets never takes the place of what the reader is told about what
    // they sent (a decision not sent yet, a refusal): that stays until they act.
    if (fromGet && postAlertShown()) return;
    var words = nodes.map(function (node) { return node.textContent; }).join("");
    // A poll failing again and again says so once, not every few seconds.
    if (!box.hidden && fromGet && errorFromPoll && words === errorShown) return;
    errorFromPoll = fromGet;
    errorShown = words;
    text.textContent = "";
    box.hidden = false;
    // Filled once shown: an alert is read out when its words arrive, the same words again too.
    window.setTimeout(function () {
      nodes.forEach(function (node) { text.appendChild(node); });
    }, 50);
  }

  function statusMessage(xhr) {
    var box = document.getElementById("request-error");
    if (!box) return "";
    var status = xhr.status;
    if (status === 429) {
      var wait = parseInt(xhr.getResponseHeader("Retry-After") || "", 10);
      if (wait > 0 && rtf) {
        var when = wait < 120 ? rtf.format(wait, "second") : rtf.format(Math.ceil(wait / 60), "minute");
        return (box.getAttribute("data-status-429-in") || "").replace("{when}", when);
      }
      return box.getAttribute("data-status-429") || "";
    }
    var words = box.getAttribute(status >= 500 ? "data-status-5xx" : "data-status-4xx") || "{status}";
    return words.replace("{status}", String(status));
  }

  // What the reader typed in the part an answer replaces: a closed form's note is not lost.
  // `changedOnly`: only what differs from what the page gave (a default is not their words).
  function typedIn(root, changedOnly) {
    var found = [];
    if (!root || !root.querySelectorAll) return found;
    root.querySelectorAll("textarea, input[type=text], input[type=url]").forEach(function (input) {
      if (!input.value.trim()) return;
      if (changedOnly && input.value === input.defaultValue) return;
      var label = input.id ? document.querySelector('label[for="' + CSS.escape(input.id) + '"]') : null;
      found.push({ label: label ? label.textContent.trim() : "", value: input.value });
    });
    return found;
  }

  function keptBox(values) {
    var box = document.getElementById("request-error");
    var section = document.createElement("section");
    section.className = "card kept-text";
    var title = document.createElement("h2");
    title.textContent = (box && box.getAttribute("data-kept")) || "";
    section.appendChild(title);
    values.forEach(function (item, index) {
      var label = document.createElement("label");
      label.htmlFor = "kept-" + index;
      label.textContent = item.label;
      var area = document.createElement("textarea");
      area.id = "kept-" + index;
      area.readOnly = true;
      area.dir = "auto";
      area.value = item.value;
      section.appendChild(label);
      section.appendChild(area);
    });
    return section;
  }

  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status < 400 || !xhr.getResponseHeader("HX-Retarget")) return;
    var target = event.detail.target;
    // A poll's refusal aimed at the alert (too many requests) leaves one about a post as it is.
    if (verb(event) === "get" && target && target.id === "request-error-text" && postAlertShown()) {
      event.detail.shouldSwap = false;
      return;
    }
    event.detail.shouldSwap = true;
    typed = typedIn(event.detail.target);
  });

  // The form closed while the reader was typing (decided by someone else, expired, answered in
  // Dify): the page's poll redraws the body without the decision form. What they typed is kept
  // beside it to copy, as a refused decision's is.
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var target = event.detail.target;
    if (!target || target.id !== "form-body") return;
    var form = target.querySelector("#decision-form");
    var fragment = event.detail.fragment;
    if (!form || (fragment && fragment.querySelector && fragment.querySelector("#decision-form"))) return;
    var changed = typedIn(form, true);
    var kept = document.getElementById("kept");
    if (changed.length && kept && !kept.children.length) kept.appendChild(keptBox(changed));
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    // Sent again: the alert about the last try goes; a new one comes if this fails too. Not
    // for a decision sent again by the page itself: its alert says so while it goes.
    if (verb(event) !== "get" && !(resend && resend.sending)) hideError();
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    // A poll that failed once and answers again: its alert is over. One about something the
    // reader sent stays until they send again or dismiss it.
    if (event.detail.successful && errorFromPoll) hideError();
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("#request-error .toast-close")) hideError();
  });

  // Handled once swapped, on the part that took the answer: the element that sent the request
  // may be gone with the part it replaced, and its own events with it.
  document.addEventListener("htmx:afterSwap", function (event) {
    var xhr = event.detail.xhr;
    var target = event.detail.target;
    if (!xhr || xhr.status < 400 || !xhr.getResponseHeader("HX-Retarget") || event.target !== target) return;
    var text = document.getElementById("request-error-text");
    if (target === text) {
      var nodes = Array.prototype.slice.call(text.childNodes);
      // Refused for the page being out of date (signed out, a stale token): it links to its
      // reload, which must find what was typed held. Looked for before showError takes the
      // nodes out of the alert (to put them back a moment later).
      var reload = nodes.some(function (node) { return !!node.querySelector && (node.matches("a[href]") || !!node.querySelector("a[href]")); });
      showError(nodes, verb(event) === "get");
      if (reload) pageOutdated();
    } else {
      // The page's content was replaced by the reason: say it, and start reading there.
      if (typed.length) target.appendChild(keptBox(typed));
      hideError();
      var heading = target.querySelector("h1");
      if (target.focus) target.focus();
      announce((heading || target).textContent.trim());
    }
    typed = [];
  });

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.getResponseHeader("HX-Retarget")) return; // swapped where it said, above
    var parts = uploadParts(event.detail.elt);
    if (parts && parts.error) {
      // The words come from the page, in its language.
      var status = String(xhr.status);
      parts.error.textContent = status === "413"
        ? parts.error.getAttribute("data-too-large") || status
        : (parts.error.getAttribute("data-upload-failed") || "{status}").replace("{status}", status);
      return;
    }
    if (verb(event) !== "get" && serverUnavailable(event)) return;
    showError([document.createTextNode(statusMessage(xhr))], verb(event) === "get");
  });

  // --- A page that can no longer send its form keeps what was typed in it ------------------
  // When the login ends or the form is no longer the reader's, the page's poll is answered with
  // HX-Refresh (HtmxReloadMiddleware), and htmx reloads the page right after
  // htmx:beforeOnLoad: a note typed and not sent would go with it. If there is one, the reload
  // waits for the reader, the page says why, and asks the server nothing more.
  var drawnText = {};

  function textFields() {
    var form = document.getElementById("decision-form");
    return form ? Array.prototype.slice.call(form.querySelectorAll("textarea, input[type=text], input[type=url]")) : [];
  }

  // What the server drew when the page loaded: a reload draws it again. A field redrawn since
  // (a decision refused for a missing choice) holds what was sent, which a reload may not draw.
  function rememberDrawnText() {
    textFields().forEach(function (input) { drawnText[input.id || input.name] = input.defaultValue; });
  }

  function typedNotSent() {
    return textFields().some(function (input) {
      var key = input.id || input.name;
      var drawn = Object.prototype.hasOwnProperty.call(drawnText, key) ? drawnText[key] : input.defaultValue;
      return input.value.trim() !== "" && input.value !== drawn;
    });
  }

  function showStale() {
    pageStale = true;
    cancelResend();
    pageOutdated();
    refreshActions();
    // This notice says it all: not a second one beside it ("Nothing sent: you are signed
    // out"), nor a claim panel offering what the page can no longer do.
    hideError();
    var lost = document.getElementById("connection-error");
    if (lost) lost.hidden = true;
    var claim = document.getElementById("claim");
    if (claim) claim.hidden = true;
    var box = document.getElementById("reload-notice");
    var text = document.getElementById("reload-notice-text");
    if (!box || !text) return;
    text.textContent = "";
    box.hidden = false;
    // Filled once shown, so the alert is read out.
    window.setTimeout(function () { text.textContent = box.getAttribute("data-message") || ""; }, 50);
  }

  document.addEventListener("htmx:beforeOnLoad", function (event) {
    var xhr = event.detail.xhr;
    if (!xhr || xhr.getResponseHeader("HX-Refresh") !== "true") return;
    if (!pageStale && !typedNotSent()) return; // nothing to lose: htmx reloads the page
    event.preventDefault();
    if (!pageStale) showStale();
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    // Each poll would only be told to reload again.
    if (pageStale && verb(event) === "get") event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    if (event.target.closest && event.target.closest("#reload-notice .reload-page")) window.location.reload();
  });

  // --- Open <details data-keep> stay open when a poll replaces the part they are in ---------
  var keptOpen = [];
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    keptOpen = target ? Array.prototype.map.call(
      target.querySelectorAll("details[open][data-keep]"),
      function (el) { return el.getAttribute("data-keep"); }
    ) : [];
  });

  // --- The inbox's poll keeps the rows where the reader's thumb is ----------------------------
  // New forms arriving above (newest first), or rows going, would push the list under a reader
  // who has scrolled down it, and a tap meant for one form would land on another. Before the
  // poll's list is swapped in, the rows from the top of the screen are noted with where they
  // are; after it, the first of them still listed is put back where it was. Only for the poll,
  // only when the reader has scrolled into the list; the focus is left alone.
  var pollAnchor = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    pollAnchor = null;
    var detail = event.detail;
    var elt = detail.requestConfig && detail.requestConfig.elt; // the element that asked
    if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-inbox-poll") || !detail.shouldSwap) return;
    var list = document.getElementById("rows");
    var inset = topInset();
    if (!list || list.getBoundingClientRect().top >= inset) return;
    var seen = [];
    rows().forEach(function (row) {
      var box = row.getBoundingClientRect();
      var link = row.querySelector("a.open");
      if (box.bottom > inset && link && seen.length < 20) seen.push({ href: link.getAttribute("href"), top: box.top });
    });
    if (seen.length) pollAnchor = { xhr: detail.xhr, rows: seen };
  });
  // Right after the swap, before anything is painted.
  document.addEventListener("htmx:afterSwap", function (event) {
    var anchor = pollAnchor;
    if (!anchor || event.detail.xhr !== anchor.xhr) return;
    pollAnchor = null;
    for (var i = 0; i < anchor.rows.length; i++) {
      var link = document.querySelector('#rows .row a.open[href="' + CSS.escape(anchor.rows[i].href) + '"]');
      if (!link) continue;
      var moved = link.closest(".row").getBoundingClientRect().top - anchor.rows[i].top;
      if (Math.abs(moved) >= 1) window.scrollBy(0, moved);
      return;
    }
  });

  // --- After every swap: fresh times, actions, kept selection -------------------------------
  document.addEventListener("htmx:afterSettle", function (event) {
    keptOpen.forEach(function (key) {
      document.querySelectorAll("details[data-keep]").forEach(function (el) {
        if (el.getAttribute("data-keep") === key) el.open = true;
      });
    });
    keptOpen = [];
    refreshTimes(event.detail.elt);
    refreshActions();
    if (selectedId) {
      var row = document.querySelector('#rows .row[data-id="' + selectedId + '"]');
      if (row) row.classList.add("selected");
    }
    var errors = document.getElementById("form-errors");
    if (errors && event.detail.elt && event.detail.elt.id === "form-body") errors.focus();
    // The reader's decision is taken: the form, shorter now, is read from its heading (its
    // title and status) rather than from wherever the page's end left the window.
    if (event.detail.elt && event.detail.elt.id === "form-body" && verb(event) === "post" && !document.getElementById("decision-form")) {
      var title = document.getElementById("form-title");
      var card = title && title.closest(".form-main");
      if (card && title.getBoundingClientRect().top < topInset()) card.scrollIntoView({ block: "start" });
    }
  });

  // --- "Someone else is handling this form. Decide anyway?" can be answered no -------------
  // The question goes (with the word that would let the next press decide), nothing is sent,
  // and the focus goes back to the action that asked it.
  function showCancels() {
    document.querySelectorAll("[data-confirm-cancel][hidden]").forEach(function (b) { b.hidden = false; });
  }
  showCancels();
  document.addEventListener("htmx:afterSettle", showCancels);
  function dismissConfirm(box) {
    var asked = box.querySelector("button[name=action]");
    var value = asked ? asked.value : "";
    var form = box.closest("form");
    box.remove();
    var back = form && form.querySelector('.actions button[name=action][value="' + CSS.escape(value) + '"]');
    if (back) back.focus();
  }
  document.addEventListener("click", function (event) {
    var cancel = event.target.closest && event.target.closest("[data-confirm-cancel]");
    var box = cancel && cancel.closest("#confirm-taken");
    if (box) dismissConfirm(box);
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    var box = document.activeElement && document.activeElement.closest && document.activeElement.closest("#confirm-taken");
    if (box) { event.preventDefault(); dismissConfirm(box); }
  });

  // --- Focus is never dropped to the page's start by a swap -------------------------------
  // A swap that takes away the element the reader was on (their button, a row, a chip) would
  // leave the focus on <body>, sending keyboard and screen reader users back to the top. The
  // focus goes instead to the same thing redrawn (a row's link, a button of the same name and
  // value), else to what the new part says first (its status, its heading), else into what
  // is left around it.
  var focusWas = null;
  function rememberFocus(target) {
    var active = document.activeElement;
    if (!target || !active || active === document.body || !target.contains(active)) return;
    if (!target.id) return;
    var around = target.parentElement;
    while (around && !around.id) around = around.parentElement;
    // In the inbox: the row's place in the list (its form may be gone from the next one), and
    // whether it was the pager (its next page is read from the start).
    var row = active.closest("#rows .row");
    focusWas = {
      target: target.id,
      around: around ? around.id : "",
      href: active.getAttribute("href"),
      name: active.getAttribute("name"),
      value: active.getAttribute("value"),
      rowIndex: row ? rows().indexOf(row) : -1,
      pager: !!active.closest(".pager"),
      at: Date.now(),
    };
  }
  // Taken when the request starts too: the button pressed is disabled while it is in flight
  // (`hx-disabled-elt`), which already takes the focus from it before the answer comes.
  document.addEventListener("htmx:beforeRequest", function (event) { rememberFocus(event.detail.target); });
  document.addEventListener("htmx:beforeSwap", function (event) {
    rememberFocus(event.detail.target);
    // A part swapped for nothing (the last file of a list removed) settles on an element no
    // longer in the page, whose events do not reach this document: look again in a moment.
    if (focusWas) setTimeout(function () { restoreFocus(true); }, 100);
  });
  document.addEventListener("htmx:oobBeforeSwap", function (event) { rememberFocus(event.detail.target); });

  function focusOn(el) {
    if (!el) return false;
    if (el.tabIndex < 0 && !el.hasAttribute("tabindex")) el.setAttribute("tabindex", "-1");
    el.focus({ preventScroll: true });
    return document.activeElement === el;
  }
  var FOCUSABLE = "a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), select, textarea";
  document.addEventListener("htmx:afterSettle", function () { restoreFocus(false); });
  // `early`: the look a moment after the swap, which leaves the memory to the settle when the
  // focus is still where it was (the swap not done yet).
  function restoreFocus(early) {
    var was = focusWas;
    var active = document.activeElement;
    if (!was) return;
    if (!early) focusWas = null;
    if (Date.now() - was.at > 60000) return;
    if (active && active !== document.body && active.isConnected) return;
    focusWas = null;
    var root = (was.target && document.getElementById(was.target)) || null;
    if (root) {
      var links = Array.prototype.slice.call(root.querySelectorAll("#rows .row a.open"));
      // Another page of the list: it is read from its first row, on the screen (htmx has
      // shown the page's top by then, under which a phone's filters can push it).
      if (was.pager && focusOn(links[0])) {
        var first = links[0].closest(".row");
        var show = function () { reveal(first, document.getElementById(was.target)); };
        window.setTimeout(show, 0);
        // Again in a moment if a late scroll (htmx's own `show`, a busy page's layout) took
        // it off the screen meanwhile.
        window.setTimeout(function () {
          var box = first.getBoundingClientRect();
          if (first.isConnected && (box.top < 0 || box.bottom > window.innerHeight)) show();
        }, 250);
        return;
      }
      if (was.href && focusOn(root.querySelector('a[href="' + CSS.escape(was.href) + '"]'))) return;
      // An action pressed on a form someone else holds brings the question "Decide anyway?":
      // it is read from its text, so a second press of the key (a double Enter) answers
      // nothing; on its own "Decide anyway" button it would decide.
      var confirm = was.name === "action" && root.querySelector("#confirm-taken");
      if (confirm && focusOn(confirm)) return;
      if (was.name) {
        var same = root.querySelector('[name="' + CSS.escape(was.name) + '"]' + (was.value ? '[value="' + CSS.escape(was.value) + '"]' : ""));
        if (same && !same.disabled && focusOn(same)) return;
      }
      // A row whose form left the list: the row now in its place, else the last one.
      if (was.rowIndex >= 0 && links.length && focusOn(links[Math.min(was.rowIndex, links.length - 1)])) return;
      // What the part says first, if it shows: a visually hidden heading would hold the focus
      // where nobody sees it.
      var says = Array.prototype.filter.call(
        root.querySelectorAll(".state-title, .empty-title, [role=status], [role=alert], h1, h2"),
        function (el) { return !el.closest(".visually-hidden, [hidden]"); }
      );
      if (focusOn(says[0])) return;
      if (focusOn(root.querySelector(FOCUSABLE))) return;
    }
    var around = was.around && document.getElementById(was.around);
    if (!around || focusOn(around.querySelector(FOCUSABLE))) return;
    // Nothing left to press where it was (the last file of a list removed): the field's next
    // control, the file picker.
    var field = around.closest("fieldset, section, form");
    if (!(field && focusOn(field.querySelector(FOCUSABLE)))) focusOn(around);
  }

  // --- Switching language keeps what was typed --------------------------------------------
  // The switch is a plain post that comes back to the same page, drawn anew in the other
  // language: what the reader typed or chose in the page's form (a decision, a run's inputs)
  // is held in the tab's session storage for the trip and put back where the new page left
  // the field as drawn. If the form closed meanwhile, the text is kept beside it to copy.
  var SWITCH_KEY = "inbox:language-switch";
  var SWITCH_FORMS = "#decision-form, form.start-form";

  function formKey(form) { return form.id || "start-form"; }

  // What a select showed as drawn: the option the server marked selected, else the first one
  // (a "Choose…" placeholder), which the browser shows without marking it.
  function drawnChoice(select) {
    var marked = Array.prototype.filter.call(select.options, function (o) { return o.defaultSelected; });
    var option = marked.length ? marked[marked.length - 1] : select.options[0];
    return option ? option.value : "";
  }

  function changedFields(form) {
    var found = [];
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || el.disabled || /^(hidden|file|submit|button|reset|password)$/.test(el.type)) return;
      if (el.type === "radio" || el.type === "checkbox") {
        if (el.checked !== el.defaultChecked) found.push({ name: el.name, type: el.type, value: el.value, checked: el.checked });
      } else if (el.tagName === "SELECT") {
        if (el.value !== drawnChoice(el)) found.push({ name: el.name, type: "select", value: el.value });
      } else if (el.value !== el.defaultValue) {
        var label = el.id ? document.querySelector('label[for="' + CSS.escape(el.id) + '"]') : null;
        found.push({ name: el.name, type: "text", value: el.value, label: label ? label.textContent.trim() : "" });
      }
    });
    return found;
  }

  // Where to come back: the address as it is now, not as the page was drawn (htmx has pushed
  // the inbox's tab, filters and page since). A path of this site only: "//host" is another's.
  function currentPath() {
    var path = window.location.pathname + window.location.search;
    return /^\/(?![\/\\])/.test(path) ? path : null;
  }

  document.addEventListener("submit", function (event) {
    if (!event.target.matches || !event.target.matches("form.lang-switch")) return;
    var next = event.target.querySelector("input[name=next]");
    var here = currentPath();
    if (next && here) next.value = here;
    var held = [];
    document.querySelectorAll(SWITCH_FORMS).forEach(function (form) {
      var fields = changedFields(form);
      if (fields.length) held.push({ form: formKey(form), fields: fields });
    });
    try {
      if (held.length) {
        window.sessionStorage.setItem(SWITCH_KEY, JSON.stringify({ path: window.location.pathname, at: Date.now(), forms: held }));
      } else {
        window.sessionStorage.removeItem(SWITCH_KEY);
      }
    } catch (e) { /* storage refused: the switch goes on as before */ }
  });

  function restoreField(form, field) {
    var selector = '[name="' + CSS.escape(field.name) + '"]';
    if (field.type === "radio" || field.type === "checkbox") {
      // By its value as the browser reads it: a box drawn with no value attribute reads "on".
      var set = false;
      Array.prototype.forEach.call(form.querySelectorAll("input" + selector), function (box) {
        if (box.value === field.value && !box.disabled && box.checked === box.defaultChecked) {
          box.checked = field.checked;
          set = true;
        }
      });
      return set ? "set" : "there";
    }
    var el = form.querySelector(selector);
    if (!el || el.disabled) return false;
    if (field.type === "select") {
      var known = Array.prototype.some.call(el.options, function (o) { return o.value === field.value; });
      if (el.value !== drawnChoice(el) || !known) return "there";
      el.value = field.value;
      return "set";
    }
    if (el.value !== el.defaultValue) return "there";
    el.value = field.value;
    return "set";
  }

  // Puts back what was held (by the switch, or over a sign-in); says how many fields took a
  // value, and keeps text whose field is gone (the form closed meanwhile) beside the page.
  function putBack(forms) {
    var lost = [];
    var set = 0;
    (forms || []).forEach(function (held) {
      var form = null;
      document.querySelectorAll(SWITCH_FORMS).forEach(function (f) { if (formKey(f) === held.form) form = f; });
      (held.fields || []).forEach(function (field) {
        var done = form ? restoreField(form, field) : false;
        if (done === "set") set++;
        if (done) return;
        if (field.type === "text" && field.value.trim()) lost.push({ label: field.label || "", value: field.value });
      });
    });
    if (lost.length) {
      // A form page keeps it in its place for kept text; a page that took the form's place
      // (its link has expired) at the end of its content.
      var kept = document.getElementById("kept");
      if (kept && !kept.children.length) kept.appendChild(keptBox(lost));
      else if (!kept) {
        var main = document.getElementById("main");
        if (main) main.appendChild(keptBox(lost));
      }
    }
    if (set) refreshActions();
    return set;
  }

  // What a page left in the tab's session storage for the next one, read once: taken away as it
  // is read, so an older note never moves a page opened later. null when there is none.
  function takeStored(key) {
    try {
      var saved = JSON.parse(window.sessionStorage.getItem(key) || "null");
      window.sessionStorage.removeItem(key);
      return saved;
    } catch (e) { return null; }
  }

  function restoreAfterSwitch() {
    var saved = takeStored(SWITCH_KEY);
    if (!saved || saved.path !== window.location.pathname || !(Date.now() - saved.at < 600000)) return;
    putBack(saved.forms);
  }

  // --- Signed out with a form half filled: what was typed comes back after signing in -------
  // When the page learns it can no longer send its form (the poll's reload notice, or a post
  // refused for the login having ended), what the reader typed or chose in the decision form
  // is held in the tab's session storage, for this form's address and this reviewer only
  // (never a file: uploads are kept by the server). The reload leads to the sign-in page,
  // which leads back to the form: there it is put back, and the page says so.
  var SIGNIN_KEY = "inbox:signed-out";
  var outdated = false;

  function currentUser() { return document.body ? document.body.getAttribute("data-user") || "" : ""; }

  function holdOverSignIn() {
    var form = document.getElementById("decision-form");
    var user = currentUser();
    if (!form || !user) return;
    var fields = changedFields(form);
    // A text the page drew from a refused decision (its default since) differs from what a
    // reload draws: held too.
    textFields().forEach(function (input) {
      var key = input.id || input.name;
      if (!input.name || !Object.prototype.hasOwnProperty.call(drawnText, key)) return;
      if (input.value === drawnText[key] || input.value !== input.defaultValue) return;
      fields.push({ name: input.name, type: "text", value: input.value, label: "" });
    });
    try {
      if (fields.length) {
        window.sessionStorage.setItem(SIGNIN_KEY, JSON.stringify({
          path: window.location.pathname, user: user, at: Date.now(), forms: [{ form: formKey(form), fields: fields }],
        }));
      } else {
        window.sessionStorage.removeItem(SIGNIN_KEY);
      }
    } catch (e) { /* storage refused: the notice still says to copy it */ }
  }

  function pageOutdated() {
    outdated = true;
    holdOverSignIn();
  }

  // Held again as the page is left (the reload), with anything typed since the notice.
  window.addEventListener("pagehide", function () { if (outdated) holdOverSignIn(); });

  function restoreAfterSignIn() {
    var saved = null;
    try { saved = JSON.parse(window.sessionStorage.getItem(SIGNIN_KEY) || "null"); } catch (e) { saved = null; }
    if (!saved) return;
    var here = saved.path === window.location.pathname;
    var user = currentUser();
    // Old, or any page signed in as someone else (a shared computer): never kept for them.
    var drop = !(Date.now() - saved.at < 3600000) || (user && saved.user !== user);
    // The sign-in page, or another page on the way: kept for the form's own.
    if (!drop && (!here || !user)) return;
    try { window.sessionStorage.removeItem(SIGNIN_KEY); } catch (e) { /* read once anyway */ }
    if (drop) return;
    if (!putBack(saved.forms)) return;
    var form = document.getElementById("decision-form");
    var words = form && form.getAttribute("data-restored");
    if (!words) return;
    var note = document.createElement("p");
    note.id = "restored-note";
    note.className = "banner info";
    note.setAttribute("role", "status");
    form.parentNode.insertBefore(note, form);
    // Filled once in the page, so it is read out.
    window.setTimeout(function () { note.textContent = words; }, 50);
  }

  // Signing out leaves nothing typed behind in the tab for whoever signs in next.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || !form.matches || !form.matches("form[data-logout]")) return;
    try {
      window.sessionStorage.removeItem(SIGNIN_KEY);
      window.sessionStorage.removeItem(SWITCH_KEY);
    } catch (e) { /* nothing was kept */ }
  }, true);

  // --- "← Inbox" goes back to the list as it was left ----------------------------------------
  // The inbox keeps its address (tab, filters, sort, page: what htmx pushed) in the tab's
  // session storage; a form page's link back to it takes that address, if it is still the
  // inbox's own. Without script the link opens the inbox as it starts.
  var LIST_KEY = "inbox:list";

  function rememberList() {
    if (!document.querySelector("[data-inbox-list]")) return;
    var here = currentPath();
    if (!here) return;
    try { window.sessionStorage.setItem(LIST_KEY, here); } catch (e) { /* the plain link stays */ }
  }

  function linkBackToList() {
    var saved = null;
    try { saved = window.sessionStorage.getItem(LIST_KEY); } catch (e) { saved = null; }
    if (!saved || !/^\/(?![\/\\])/.test(saved)) return;
    document.querySelectorAll("a[data-inbox-back]").forEach(function (link) {
      var back;
      var plain;
      try {
        back = new URL(saved, window.location.origin);
        plain = new URL(link.getAttribute("href"), window.location.href);
      } catch (e) { return; }
      if (back.origin !== window.location.origin || back.pathname !== plain.pathname) return;
      // At this form's place in that list (`after`), as the plain link is.
      var after = plain.searchParams.get("after");
      if (after) back.searchParams.set("after", after);
      link.setAttribute("href", back.pathname + back.search + plain.hash);
    });
  }

  // --- Back in the list, at the place of the form just seen ---------------------------------
  // The list drawn with `?after=` marks the row in that form's place (the row after it once it
  // is decided) `#place`, selected: here the focus goes to it, on the screen, so j / k / Enter
  // go on from there; where nothing is left, to what the empty list says. The address then
  // drops `after` (a reload or a link taken from it opens the list as it is).
  var PLACE_KEY = "inbox:place";

  function showPlace(root) {
    var place = root && root.querySelector ? root.querySelector("#place") : null;
    if (!place) return false;
    // Shown once: a later swap (the counts, a poll) leaves the focus where the reader took it.
    place.removeAttribute("id");
    var asked = placeAsked;
    placeAsked = null;
    var row = place.closest("#rows .row");
    if (asked && asked.acted) {
      // Asked for after going back, and the reader moved on meanwhile (pressed "/" and typed a
      // search, took a row): the focus stays where they took it.
    } else if (row) {
      select(row, false);
      focusOn(row.querySelector("a.open"));
      reveal(row);
    } else {
      focusOn(place);
      reveal(place);
    }
    try {
      var url = new URL(window.location.href);
      if (url.searchParams.has("after") || url.hash === "#place") {
        url.searchParams.delete("after");
        url.hash = "";
        window.history.replaceState(window.history.state, "", url.pathname + url.search);
      }
    } catch (e) { /* the address keeps it: a reload shows the same place */ }
    return true;
  }

  // A form page notes its form for the back button, which shows the list as it was left
  // (the browser's cache, or drawn again without `after`): the list then asks for its place.
  function notePlace() {
    var link = document.querySelector("a[data-inbox-back]");
    if (!link) return;
    var after;
    try { after = new URL(link.getAttribute("href"), window.location.href).searchParams.get("after"); } catch (e) { return; }
    if (!after) return;
    try { window.sessionStorage.setItem(PLACE_KEY, JSON.stringify({ id: after, at: Date.now() })); } catch (e) { /* the links still carry it */ }
  }

  // Taken once, by the list shown next: an older note would move a list opened later.
  function takePlace() {
    var saved = takeStored(PLACE_KEY);
    return saved && typeof saved.id === "string" && /^[0-9a-f-]{36}$/i.test(saved.id) && Date.now() - saved.at < 3600000 ? saved.id : null;
  }

  // The list asked again for its place after going back: its answer comes a moment later, by
  // which time the reader may have moved on (a key pressed, a tap). Then the answer is not
  // swapped in (its list may be older than a search they typed), nor the focus moved.
  var placeAsked = null; // { path, acted }

  function placeAfterBack(backward) {
    if (!document.querySelector("[data-inbox-list]")) return;
    var id = takePlace();
    if (!id || !backward || document.getElementById("place") || !window.htmx || !document.getElementById("results")) return;
    var url = new URL(window.location.href);
    url.searchParams.set("after", id);
    url.hash = "";
    placeAsked = { path: url.pathname + url.search, acted: false };
    window.htmx.ajax("GET", placeAsked.path, { target: "#results", swap: "outerHTML" });
  }

  ["keydown", "pointerdown"].forEach(function (name) {
    document.addEventListener(name, function () { if (placeAsked) placeAsked.acted = true; }, true);
  });

  document.addEventListener("htmx:beforeSwap", function (event) {
    var asked = placeAsked;
    var config = event.detail.requestConfig;
    if (!asked || !asked.acted || !config || config.path !== asked.path) return;
    placeAsked = null;
    event.detail.shouldSwap = false;
  });

  function cameBack() {
    try {
      var nav = window.performance.getEntriesByType("navigation")[0];
      return !!nav && nav.type === "back_forward";
    } catch (e) { return false; }
  }

  document.addEventListener("htmx:afterSettle", function () { showPlace(document); });
  // Back from a form page to a list the browser kept whole (no new load).
  window.addEventListener("pageshow", function (event) { if (event.persisted) placeAfterBack(true); });

  // "Next form in your list", after a decision, carries the list the reader came from (its
  // filters, search and sort); without script it takes the pending forms in their usual order.
  function linkNextInList() {
    var saved = null;
    try { saved = window.sessionStorage.getItem(LIST_KEY); } catch (e) { saved = null; }
    if (!saved || !/^\/(?![\/\\])/.test(saved)) return;
    var search;
    try { search = new URL(saved, window.location.origin).search; } catch (e) { return; }
    document.querySelectorAll("a[data-next-in-list]").forEach(function (link) {
      var next;
      try { next = new URL(link.getAttribute("href"), window.location.href); } catch (e) { return; }
      next.searchParams.set("list", search.replace(/^\?/, ""));
      link.setAttribute("href", next.pathname + next.search);
    });
  }

  document.addEventListener("htmx:afterSettle", linkNextInList);

  ["htmx:pushedIntoHistory", "htmx:replacedInHistory", "htmx:historyRestore"].forEach(function (name) {
    document.addEventListener(name, rememberList);
  });

  // --- Start pages: a kept file fills its field -------------------------------------------
  // A file the page's last sending sent to Dify, ticked, fills its field: the field's input
  // (`data-required`, drawn without `required` while one is) is not required meanwhile, its
  // mark hidden; unticked, both come back.
  function fitKeptFiles(field) {
    var input = field.querySelector("input[type=file][data-required]");
    if (!input) return;
    var filled = field.querySelector(".kept-files input[name=kept_files]:checked") !== null;
    input.required = !filled;
    var mark = field.querySelector("[data-required-mark]");
    if (mark) mark.hidden = filled;
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box || box.name !== "kept_files" || !box.closest) return;
    var field = box.closest(".field");
    if (field) fitKeptFiles(field);
  });

  // Ticks the browser restored (back, forward) count as the reader's.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll(".start-form .field").forEach(fitKeptFiles);
  });

  document.addEventListener("inbox:announce", function (event) {
    announce(event.detail && event.detail.message);
  });

  document.addEventListener("DOMContentLoaded", function () {
    rememberDrawnText(); // what the server drew: a text put back below is typed, not drawn
    restoreAfterSwitch();
    restoreAfterSignIn();
    refreshTimes();
    refreshActions();
    fitScrollPadding();
    showPlace(document);
    placeAfterBack(cameBack());
    notePlace();
    rememberList();
    linkBackToList();
    linkNextInList();
    fitTabs(document.getElementById("tabs"), true);
    applyShortcuts();
    // A page sent back with errors (the start form, a form page without htmx): the reader
    // starts at what to correct.
    var summary = document.getElementById("start-errors") || document.getElementById("form-errors") || document.getElementById("login-error");
    if (summary) summary.focus();
  });
})();
