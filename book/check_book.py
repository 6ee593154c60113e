"""The book checked in a real browser: every page loads, its equations render, its links and images resolve.

    python book/check_book.py build/book        # make book-check (after make book)

Serves the built book over HTTP on localhost and opens it in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium), starting from ``index.html`` and following
every link inside the book. On each page it waits for MathJax to finish and checks:

- the page loaded, with a title, and the browser logged no error (a missing favicon apart);
- every equation Sphinx wrote (``span.math``, ``div.math``) was typeset by MathJax, with no TeX error;
- every image loaded (a natural width above zero);
- every link inside the book reaches a file that exists, and its ``#anchor`` an element of the target;
- the notebooks' pages have previous/next links.

Links leaving the book (the paper on arxiv.org) are listed, not followed: the check runs offline.
Prints one line per page and a summary; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

# Runs in the page: waits for MathJax to typeset, then reports what the checks need.
PAGE_REPORT = """
const done = arguments[arguments.length - 1];
const MATH = 'span.math.notranslate, div.math.notranslate';  // what Sphinx writes; MathJax adds inner span.math
const report = () => done({
  title: document.title,
  equations: document.querySelectorAll(MATH).length,
  unrendered: [...document.querySelectorAll(MATH)].filter(e => !e.querySelector('.MathJax, .MathJax_Display')).length,
  errors: [...document.querySelectorAll('mjx-merror, .MathJax_Error, [data-mjx-error]')]
      .map(e => e.textContent).slice(0, 3),
  images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  prevnext: document.querySelectorAll('.prev-next-area a').length,
});
const waitForMathJax = () => {  // MathJax 3 loads asynchronously; its startup promise resolves once typeset
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { MathJax.startup.promise.then(report, report); }
  else if (document.readyState !== 'complete' || performance.now() < 5000) { setTimeout(waitForMathJax, 100); }
  else { report(); }
};
waitForMathJax();
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the browser's requests are checked in the page, not logged
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def browser() -> webdriver.Chrome:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            sys.exit(f"check_book: {path} not found; install Debian's: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    return driver


def check_page(driver: webdriver.Chrome, url: str, root: str, folder: Path) -> tuple[dict, list[str]]:
    """Load ``url``; return what the page reported and the problems found on it."""
    driver.get(url)
    page = driver.execute_async_script(PAGE_REPORT)
    problems = []
    if not page["title"]:
        problems.append("no title")
    if page["unrendered"] or page["errors"]:
        problems.append(f"{page['unrendered']} of {page['equations']} equations not typeset; "
                        f"TeX errors {page['errors']}")
    problems += [f"image did not load: {src}" for src, loaded in page["images"] if not loaded]
    problems += [f"browser log: {entry['message'][:200]}" for entry in driver.get_log("browser")
                 if entry["level"] == "SEVERE" and "/favicon.ico" not in entry["message"]]  # the browser's own ask
    for link in page["links"]:
        target, anchor = urldefrag(link)
        if not target.startswith(root):
            continue
        path = folder / unquote(urlparse(target).path[len(urlparse(root).path):])
        if path.is_dir():
            path = path / "index.html"
        if not path.exists():
            problems.append(f"broken link: {link}")
        elif anchor and path.suffix == ".html" and f'id="{anchor}"' not in path.read_text(errors="replace"):
            problems.append(f"missing anchor: {link}")
    return page, problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("book", type=Path, help="the built book (build/book)")
    folder = parser.parse_args(argv).book.resolve()
    if not (folder / "index.html").exists():
        sys.exit(f"check_book: {folder / 'index.html'} not found; build the book first: make book")
    server, root = serve(folder)
    driver = browser()
    start, failures, external, todo, seen = time.perf_counter(), 0, set(), [root + "index.html"], set()
    try:
        while todo:
            url = todo.pop(0)
            if url in seen:
                continue
            seen.add(url)
            try:
                page, problems = check_page(driver, url, root, folder)
            except WebDriverException as error:
                page, problems = {"equations": 0, "images": [], "links": [], "prevnext": 0}, [str(error)[:200]]
            name = url[len(root):]
            if name[:2].isdigit() and page["prevnext"] == 0:
                problems.append("no previous/next links")
            external.update(link for link in page["links"] if not link.startswith(root))
            for link in page["links"]:
                target = urldefrag(link)[0]
                if target.startswith(root) and target.endswith(".html") and "/_" not in target[len(root):]:
                    todo.append(target)
            failures += bool(problems)
            print(f"{'FAIL' if problems else 'ok  '} {name}: {page['equations']} equations, {len(page['images'])} "
                  f"images, {len(page['links'])} links" + "".join(f"\n     {p}" for p in problems))
    finally:
        driver.quit()
        server.shutdown()
    print(f"{len(seen)} pages checked in {time.perf_counter() - start:.0f} s, {failures} with problems; "
          f"{len(external)} links leave the book (not followed offline): {', '.join(sorted(external)[:5])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
