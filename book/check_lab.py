"""The notebooks' widgets checked live in JupyterLab, in headless Chromium, as a learner meets them.

    python book/check_lab.py                 # make lab-check: the notebooks that hold widgets
    python book/check_lab.py 03 05           # only the notebooks whose names start so

Copies the notebooks folder into a temporary directory (the committed files are never touched),
starts this environment's JupyterLab on it (the settings ``make lab`` gives) and, for each notebook
with widgets, in Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium):

1. opens it and waits for the kernel: the notebook must not be modified by opening it (a
   kernelspec or metadata JupyterLab rewrites would mark it so), nor show a widget as its text
   repr (a committed widget state in an untrusted notebook does);
2. runs all cells (under ``ENCNET_QUICK=1``, the size ``make test`` runs) and counts the widgets
   drawn and any "Error displaying widget";
3. moves the first control of each widget (a dropdown to its next option, a slider one step, then
   its button clicked) and checks that the widget's own output changed;
4. saves, shuts the kernel down, reopens the notebook and checks again for "Error displaying
   widget" (what a learner sees on coming back to a saved notebook).

Prints a line per step and per notebook; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from check_book import browser
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
WIDGETS = ("01", "02", "03", "05")  # the notebooks with widgets

# JavaScript run in JupyterLab's page (the app is exposed as window.jupyterapp).
CURRENT = "const panel = window.jupyterapp && jupyterapp.shell.currentWidget;"
STATE = CURRENT + """
if (!panel || !panel.content || !panel.sessionContext || !panel.context.isReady) { return null; }
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
return {dirty: panel.context.model.dirty, kernel: kernel ? kernel.status : 'none', cells: cells.length,
        run: cells.filter(c => c.model.executionCount !== null).length,
        busy: cells.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
        widgets: panel.node.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
        raw: (panel.node.textContent.match(/\\w+\\(children=\\(/g) || []).length,  // a widget shown as its repr
        errors: (panel.node.textContent.match(/Error displaying widget: [a-z ]*/g) || []).slice(0, 3)};
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_lab(folder: Path, port: int, token: str, log) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}",
               "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # a container's root user
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ENCNET_QUICK": "1"})


def wait(condition, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def open_notebook(driver, base: str, token: str, name: str) -> dict:
    """Open ``name`` alone (``reset``: no tab of an earlier notebook restored) and wait for its kernel."""
    driver.get(f"{base}lab/tree/{name}?token={token}&reset")
    wait(lambda: (s := driver.execute_script(STATE)) and s["kernel"] == "idle", 180,
         f"{name} to open with an idle kernel")
    time.sleep(3)  # what JupyterLab rewrites, it rewrites once the kernel is connected
    return driver.execute_script(STATE)


def run_all(driver, name: str) -> dict:
    driver.execute_script(CURRENT + "jupyterapp.commands.execute('notebook:run-all-cells');")
    return wait(lambda: (s := driver.execute_script(STATE)) and s["run"] == s["cells"] and not s["busy"]
                and s["kernel"] == "idle" and s, 600, f"{name} to run", step=1)


def output_of(driver, box) -> str:
    """What a widget shows besides its controls: its Output widgets, or all of it if it has none."""
    return driver.execute_script(
        "const outputs = [...arguments[0].querySelectorAll('.widget-output')];"
        " return outputs.length ? outputs.map(e => e.innerHTML).join('') : arguments[0].innerHTML;", box)


def move(driver, box) -> str | None:
    """Move the widget's first dropdown or slider, then click its first button; say what was moved."""
    selects = box.find_elements(By.CSS_SELECTOR, "select")
    handles = box.find_elements(By.CSS_SELECTOR, ".noUi-handle, input[type=range]")
    buttons = box.find_elements(By.CSS_SELECTOR, "button.jupyter-button")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    moved = []
    if selects:  # the next option, picked as a user picks it: a change event on the select
        moved.append("dropdown -> " + driver.execute_script(
            "const s = arguments[0]; s.selectedIndex = (s.selectedIndex + 1) % s.options.length;"
            " s.dispatchEvent(new Event('change', {bubbles: true})); return s.options[s.selectedIndex].text;",
            selects[0]))
    elif handles:  # one step with the keyboard, as a user moves a focused slider
        driver.execute_script("arguments[0].focus();", handles[0])
        driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
        moved.append("slider one step")
    if buttons:
        driver.execute_script("arguments[0].click();", buttons[0])
        moved.append(f"button {buttons[0].text!r}")
    return " + ".join(moved) or None


def move_every_widget(driver) -> list[str]:
    """Move each widget that has controls and wait for its own output to change; the problems found."""
    problems = []
    panel = driver.execute_script(CURRENT + "return panel.node;")
    for number, box in enumerate(panel.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output > .jupyter-widgets")):
        before = output_of(driver, box)
        moved = move(driver, box)
        if moved is None:
            continue  # no control (a progress bar)
        try:
            wait(lambda: output_of(driver, box) != before, 120, "its output to change", step=1)  # noqa: B023
            print(f"  widget {number}: {moved}: its output changed")
        except TimeoutError as error:
            problems.append(f"widget {number}: {moved}: {error}")
    return problems


def check_notebook(driver, base: str, token: str, name: str) -> list[str]:
    problems = []
    start = time.perf_counter()
    opened = open_notebook(driver, base, token, name)
    print(f"  opened: modified by opening {opened['dirty']}, kernel {opened['kernel']}, "
          f"widgets shown as text {opened['raw']}")
    if opened["dirty"]:
        problems.append("opening the notebook modified it")
    if opened["raw"]:
        problems.append(f"{opened['raw']} widgets shown as text ('...(children=(...') before running")
    state = run_all(driver, name)
    time.sleep(2)
    state = driver.execute_script(STATE)
    print(f"  ran {state['run']}/{state['cells']} cells in {time.perf_counter() - start:.0f} s: "
          f"{state['widgets']} widget views, errors {state['errors']}")
    if not state["widgets"]:
        problems.append("no widget drawn")
    if state["errors"]:
        problems.append(f"after running: {state['errors']}")
    problems += move_every_widget(driver)
    wait(lambda: driver.execute_script(STATE)["kernel"] == "idle", 600, "what the controls started (a training)")
    time.sleep(2)  # the last outputs of a run reach the page after the kernel went idle
    driver.execute_script(CURRENT + "jupyterapp.commands.execute('docmanager:save');")
    wait(lambda: not driver.execute_script(STATE)["dirty"], 60, "the save")
    driver.execute_script(CURRENT + "panel.sessionContext.shutdown();")
    time.sleep(2)
    reopened = open_notebook(driver, base, token, name)
    time.sleep(3)
    reopened = driver.execute_script(STATE)
    print(f"  saved, kernel shut down, reopened: {reopened['widgets']} widget views, errors {reopened['errors']}")
    if reopened["errors"]:
        problems.append(f"after saving and reopening: {reopened['errors']}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="only the notebooks whose names start so (e.g. 03)")
    prefixes = tuple(parser.parse_args(argv).prefixes)
    notebooks = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
                 if p.name.startswith(prefixes or WIDGETS)]
    if not notebooks:
        sys.exit(f"check_lab: no notebook matches {list(prefixes)}; pass prefixes such as 03")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="encnet-lab-") as tmp:
        folder = Path(tmp) / "notebooks"
        shutil.copytree(ROOT / "notebooks", folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        port, token = free_port(), secrets.token_hex(16)
        log = open(folder / "lab.log", "w")  # JupyterLab's output, shown if it fails to start
        lab = start_lab(folder, port, token, log)
        base = f"http://127.0.0.1:{port}/"
        driver = browser()
        try:
            try:
                wait(lambda: lab.poll() is None and socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60,
                     "JupyterLab to start")
            except TimeoutError:
                tail = (folder / "lab.log").read_text()[-2000:]
                sys.exit(f"check_lab: JupyterLab did not start; its log ends:\n{tail}")
            for path in notebooks:
                print(f"{path.name}:", flush=True)
                try:
                    problems = check_notebook(driver, base, token, path.name)
                except Exception as error:  # a timeout or a vanished element: report it, go on
                    problems = [f"{type(error).__name__}: {str(error)[:200]}"]
                failures += bool(problems)
                print(f"  {'FAIL' if problems else 'ok'}" + "".join(f"\n    {p}" for p in problems), flush=True)
        finally:
            driver.quit()
            lab.terminate()
            lab.wait(30)
            log.close()
    print(f"{len(notebooks)} notebooks checked in JupyterLab, {failures} with problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
