# The switch between two sets of the firmware's files, so that a power cut at any moment leaves a
# whole version on flash. An update (ota.py) unpacks the new files into NEW and copies each file they
# replace into OLD; nothing has changed yet. Then a journal is written (one rename: there or not), and
# the files are moved into place; each move is a rename, which LittleFS does in one step. A cut
# anywhere leaves the journal, and boot.py replays it before anything else is imported: the moves
# are done again where they are missing, and the device boots the new version. The new version then
# runs on trial (TRIAL): guard.py counts its boots and rolls back (the same journal, the other way)
# when it has not run cleanly in TRIES boots; a clean run confirms it. Imported for each step and
# dropped after: at rest it costs nothing.
import json
import os
import sys
import time

import persist

NEW = "sw_new"  # the update's files, unpacked and checked
OLD = "sw_old"  # copies of the files the update replaced, until the new version is confirmed
PACKAGE = "sw.pkg"  # the package as it is downloaded
JOURNAL = "sw_switch.json"  # the switch under way: {"op": "install"|"rollback", ...}
TRIAL = "sw_trial.json"  # the new version is on trial: {"boots": n, "added": [...], "target": {...}}
STATE = "sw_state.json"  # the last update's outcome, reported to the platform at every connect
MANIFEST = "fw.json"  # the installed package's title, version and files (streams.py reads it)
TRIES = 2  # boots the new version gets to run cleanly: one may be cut by a power loss
_BOOTS = "bootcount"  # guard.py's quick-boot count: the resets of a switch are not crashes


def target(sw):
    """The package the sw_* shared attributes name, as the journal and the outcome keep it."""
    return {"title": sw.get("sw_title"), "version": sw.get("sw_version"), "checksum": sw.get("sw_checksum")}


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def twin(name):
    """The other form of a module (x.py for x.mpy, and back): left beside it, .py wins at import."""
    if name.endswith(".mpy"):
        return name[:-4] + ".py"
    if name.endswith(".py"):
        return name[:-3] + ".mpy"
    return None


def clear(folder):
    """Remove `folder` and its files (the switch's folders hold files only), if it exists."""
    if not exists(folder):
        return
    for name in os.listdir(folder):
        os.remove(folder + "/" + name)
    os.rmdir(folder)


def discard(path):
    """Remove the file `path` if it is there."""
    if exists(path):
        os.remove(path)


def backup(name, buf):
    """Copy the file `name` replaces, and its twin, into OLD; whether `name` was there."""
    for n in (name, twin(name)):
        if n is None or not exists(n):
            continue
        with open(n, "rb") as src, open(OLD + "/" + n, "wb") as dst:
            while True:
                k = src.readinto(buf)
                if not k:
                    break
                dst.write(memoryview(buf)[:k])
    return exists(name)


def commit(names, added, target):
    """Switch to the files in NEW (`names`, the manifest among them): `added` are those that had no
    file to replace, `target` names the version ({"title", "version", "checksum"})."""
    persist.write(JOURNAL, json.dumps({"op": "install", "files": names, "added": added, "target": target}))
    replay()


def rollback(why):
    """Back to the files in OLD, for the version on trial; the outcome FAILED with `why`."""
    trial = persist.load(TRIAL)
    if not isinstance(trial, dict):
        return
    persist.write(JOURNAL, json.dumps({"op": "rollback", "added": trial["added"], "target": trial["target"],
                                       "error": why}))
    replay()


def replay():
    """Finish the switch the journal describes (all of it, whatever was done before a cut)."""
    j = persist.load(JOURNAL)
    if not isinstance(j, dict):
        discard(JOURNAL)  # not one (persist.write leaves a whole file or none): nothing to finish
        return
    if j["op"] == "install":
        for name in j["files"]:
            if exists(NEW + "/" + name):
                persist.replace(NEW + "/" + name, name)
            t = twin(name)
            if t is not None:
                discard(t)
        persist.write(TRIAL, json.dumps({"boots": 0, "added": j["added"], "target": j["target"]}))
        print("update: switched to %s %s" % (j["target"]["title"], j["target"]["version"]))
    else:
        for name in j["added"]:
            discard(name)
        if exists(OLD):
            for name in os.listdir(OLD):
                persist.replace(OLD + "/" + name, name)
        outcome(j["target"], "FAILED", j["error"])
        discard(TRIAL)
        print("update: rolled back from %s: %s" % (j["target"]["version"], j["error"]))
    discard(_BOOTS)
    discard(JOURNAL)
    clear(NEW)
    if j["op"] != "install":
        clear(OLD)


def outcome(target, state, error=None):
    """Keep an update's outcome for the platform: reported at every connect (software.py), and a
    FAILED one is not tried again until the platform names another package."""
    persist.write(STATE, json.dumps({"state": state, "error": error, "target": target}))


def reset(why):
    """Restart on purpose, into the files now in place: a board resets; the host process ends with
    code 3, which run.sh takes for a reset and answers by starting the firmware again. (guard.reboot
    does the same after a crash; kept apart, as this one costs no heap at rest.)"""
    print("update: resetting: %s" % why)
    if sys.platform == "esp32":
        import machine

        time.sleep_ms(200)  # let the console drain
        machine.reset()
    sys.exit(3)


def trial_boot():
    """A boot of the version on trial (guard.py): counted; when it has used its TRIES, rolled back."""
    trial = persist.load(TRIAL)
    if not isinstance(trial, dict):
        discard(TRIAL)
        return
    if trial["boots"] >= TRIES:
        rollback("version %s did not run cleanly in %d boots" % (trial["target"]["version"], TRIES))
        reset("rolled back")
    trial["boots"] += 1
    persist.write(TRIAL, json.dumps(trial))


def probation(now, telemetry):
    """Called by the loop while a version is on trial: kept once it has served UPDATE_PROBATION_S
    and reached the platform (a version that cannot be managed any more is no good); rolled back if
    it has not reached it in UPDATE_TRIAL_MAX_S."""
    import cfg
    import guard

    up = telemetry.link is None or telemetry.connected
    ran = time.ticks_diff(now, guard.START)
    most = getattr(cfg, "UPDATE_TRIAL_MAX_S", 600)
    if ran >= most * 1000 and not up:
        rollback("the new version did not reach the platform in %d s" % most)
        reset("rolled back")
    if ran < getattr(cfg, "UPDATE_PROBATION_S", 30) * 1000 or not up:
        return
    trial = persist.load(TRIAL)
    if isinstance(trial, dict):
        outcome(trial["target"], "UPDATED")
    discard(TRIAL)
    clear(OLD)
    print("update: version kept after its trial")
    guard.TRIAL = False
    sys.modules.pop("fwswitch", None)
    telemetry.sw_reported = False  # UPDATED, and then whatever the platform names next (software.py)
    telemetry.sw_due = True
