"""A real browser for the tests: open an HTML file in headless Chromium and report what it saw.

No WebDriver or DevTools client is installed here (Playwright and Selenium download their own
browsers, which CI cannot), so the probe is a script injected into a copy of the page: it
collects script errors, console errors and failed loads from the first moment, and after the
load event writes what it found (each image: loaded or not, its alt and position; each table's
position; the page's errors) into the DOM, which ``chromium --dump-dom`` prints.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

_PROBE = """<script>
window.__seen = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__seen.push(t && t.tagName ? 'failed to load ' + t.tagName + ' ' + (t.alt || t.src || '')
                                    : 'script error: ' + e.message);
}, true);
['error', 'warn'].forEach(function (level) {
  var orig = console[level];
  console[level] = function () {
    window.__seen.push('console.' + level + ': ' + Array.prototype.join.call(arguments, ' '));
    orig.apply(console, arguments);
  };
});
window.addEventListener('load', function () {
  var top = function (el) { return el.getBoundingClientRect().top + window.scrollY; };
  var out = {
    errors: window.__seen,
    images: Array.prototype.map.call(document.images, function (im) {
      return {alt: im.alt, ok: im.complete && im.naturalWidth > 0, top: top(im),
              width: im.naturalWidth};
    }),
    tables: Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
      return {top: top(t), folded: !!t.closest('details:not([open])')};
    }),
    height: document.documentElement.scrollHeight,
    first: {}
  };
  ['h2', 'ul.claims', 'details', 'table', 'figure'].forEach(function (sel) {
    var el = document.querySelector(sel);
    out.first[sel] = el ? top(el) : null;
  });
  out.counts = {};
  (window.__countSelectors || []).forEach(function (sel) {
    out.counts[sel] = document.querySelectorAll(sel).length;
  });
  var pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The Chromium binary, or skip the test with the reason and the fix."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (Debian/Ubuntu: apt-get install chromium)")


def inspect_page(
    page: Path, workdir: Path, count_selectors: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Load ``page`` in headless Chromium; returns ``errors`` (script errors, console errors
    and warnings, failed loads), ``images`` (alt, ok, top, width each), ``tables`` (top,
    folded (inside a closed <details>) each), ``first`` (the top of the first h2, ul.claims,
    details, table and figure) and the page ``height``, all in CSS pixels; and ``counts``: for
    each CSS selector in ``count_selectors``, how many elements match after the load event
    (after the page's own scripts ran, e.g. math typeset on DOMContentLoaded).

    The probed copy of the page is written into ``workdir``: pass the page's own folder when
    it loads files by relative paths (a built docs site)."""
    text = page.read_text()
    probed = workdir / f"probed-{page.name}"
    head = re.search(r"<head[^>]*>", text)
    at = head.end() if head else 0
    selectors = f"<script>window.__countSelectors = {json.dumps(list(count_selectors))};</script>"
    probed.write_text(text[:at] + selectors + _PROBE + text[at:])
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,900",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run; chromium said: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
