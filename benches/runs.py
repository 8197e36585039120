"""Reading what benches/servers.sh's run_case leaves in OUT: loadgen's --json result
(NAME-KIND.json) and its stderr with the SERVER_CPU marks (NAME-KIND.stderr).
Imported by the table code of benches/compare.sh and benches/sweep.sh."""
import json
import os


class Runs:
    def __init__(self, out):
        self.out = out

    def load(self, name):
        try:
            return json.load(open(os.path.join(self.out, name + ".json")))
        except Exception:
            return None

    def marks(self, name):
        """SERVER_CPU <mark> <unix ms> <cpu ms> lines: {mark: (unix ms, cpu ms)}."""
        m = {}
        try:
            for line in open(os.path.join(self.out, name + ".stderr")):
                p = line.split()
                if len(p) >= 4 and p[0] == "SERVER_CPU":
                    m[p[1]] = (int(p[2]), int(p[3]))
        except OSError:
            pass
        return m

    def cpu_ms(self, name, idle_corrected=False):
        """Server CPU from the first publish until everything was delivered."""
        m = self.marks(name)
        if "publish_start" not in m or "drained" not in m:
            return None
        (t0, c0), (t1, c1) = m["publish_start"], m["drained"]
        busy = c1 - c0
        if idle_corrected and "connected" in m and t0 > m["connected"][0]:
            # Server CPU while idle with every client connected (settle time before publishing).
            idle_rate = (c0 - m["connected"][1]) / (t0 - m["connected"][0])
            busy -= idle_rate * (t1 - t0)
        return busy

    def per_delivery(self, name, r, idle_corrected=False):
        """Server CPU µs per message received."""
        ms = self.cpu_ms(name, idle_corrected)
        d = r and r["delivery"]["received"]
        return ms * 1000 / d if ms is not None and d else None


def lat(r, key):
    """publish -> receive latency percentile in ms (key: p50, p99, p999, max)."""
    l = r and r["delivery"]["latency_us"]
    return l[key] / 1000 if l and l.get("count") else None


def span(r):
    return r and r["delivery"].get("span_ms")


def deliveries_per_sec(r):
    """Messages received ÷ (first publish sent -> last received)."""
    s = span(r)
    return r["delivery"]["received"] * 1000 / s if s else None


def check(r):
    c = r and r["delivery"].get("check")
    if not c:
        return "n/a"
    return f'{c["received"]}/{c["expected"]} lost {c["lost"]} dup {c["duplicated"]} ooo {c["out_of_order"]}'


def clean(r):
    """Everything expected arrived once, in order."""
    c = r and r["delivery"].get("check")
    return bool(c) and c["lost"] == 0 and c["duplicated"] == 0 and c["out_of_order"] == 0 \
        and c["received"] == c["expected"]


def append_to_section(path, run, heading):
    """Put the text of file `run` at the end of section `heading` of the markdown file
    `path` (before the next "## " heading), or start that section at the end of the file."""
    text = open(path).read() if os.path.exists(path) else ""
    block = open(run).read().rstrip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    if heading + "\n" in lines:
        i = lines.index(heading + "\n") + 1
        while i < len(lines) and not lines[i].startswith("## "):
            i += 1
        head = "".join(lines[:i]).rstrip("\n") + "\n\n"
        tail = "".join(lines[i:])
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    open(path, "w").write(text.rstrip("\n") + "\n")


if __name__ == "__main__":
    import sys

    # python3 benches/runs.py append RESULTS.md RUN.md "## heading"
    if len(sys.argv) == 5 and sys.argv[1] == "append":
        append_to_section(*sys.argv[2:])
    else:
        sys.exit("usage: runs.py append RESULTS.md RUN.md HEADING")
