#!/usr/bin/env python3
"""Walk through the five scenarios of DEMO.md, printing every command and its output.

    python demo_complete.py [--keep]

Each scenario runs in its own fresh queue home in a temporary directory (the
queue in your current directory is never touched), and every worker the demo
starts is stopped when it ends, also on failure or Ctrl+C. ``--keep`` leaves
the queue homes in place for a look afterwards. The exit status is 0 only if
every scenario behaved as DEMO.md says.
"""

import argparse
import sys

from demo_support import Narrator, exit_on_sigterm, run_scenarios, tolerate_any_terminal


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the five QueueCTL demo scenarios, narrated.")
    parser.add_argument("--keep", action="store_true", help="keep the temporary queue homes afterwards")
    args = parser.parse_args(argv)
    tolerate_any_terminal()
    exit_on_sigterm()
    narrator = Narrator()
    narrator.say("QueueCTL demonstration: the five scenarios of DEMO.md, run for real.")
    narrator.say("Commands are shown as you would type them; each scenario has its own QUEUECTL_HOME.")

    def report(name, summary, error):
        narrator.say()
        narrator.say(f"✅ Result: {summary}" if error is None else f"❌ {name} FAILED: {error}")

    try:
        results = run_scenarios(narrator, report, keep=args.keep)
    except KeyboardInterrupt:
        print("\nInterrupted; the demo's workers have been stopped.", file=sys.stderr)
        return 130

    narrator.banner("Summary")
    for name, error in results:
        narrator.say(f"✅ {name}" if error is None else f"❌ {name}: {error}")
    failed = sum(error is not None for _, error in results)
    narrator.say()
    narrator.say("All scenarios behaved as described." if not failed
                 else f"{failed} of {len(results)} scenario(s) did not behave as described.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
