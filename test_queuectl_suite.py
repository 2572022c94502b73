#!/usr/bin/env python3
"""Check the five scenarios of DEMO.md against the real CLI and print a pass/fail report.

    python test_queuectl_suite.py [-v]

The checks are the demo's own scenarios (demo_support.py) run quietly; ``-v``
narrates them as the demo does. Exit status 0 only if all five pass. This is a
script, not a pytest module: the project's unit tests live in tests/.
"""

import argparse
import sys

from demo_support import Narrator, SCENARIOS, exit_on_sigterm, run_scenarios, tolerate_any_terminal

RULE = "=" * 70


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check the five QueueCTL demo scenarios.")
    parser.add_argument("-v", "--verbose", action="store_true", help="narrate every command and its output")
    args = parser.parse_args(argv)
    tolerate_any_terminal()
    exit_on_sigterm()

    print(RULE)
    print(" " * 20 + "QUEUECTL TEST SUITE")
    print(RULE)
    print(flush=True)

    def report(name, summary, error):
        if args.verbose:
            print()
        line = f"✅ PASSED: {name}" if error is None else f"❌ FAILED: {name} — {error}"
        print(line, flush=True)

    try:
        results = run_scenarios(Narrator(quiet=not args.verbose), report)
    except KeyboardInterrupt:
        print("\nInterrupted; the suite's workers have been stopped.", file=sys.stderr)
        return 130

    passed = sum(error is None for _, error in results)
    print()
    print(f"Results: {passed}/{len(SCENARIOS)} tests passed")
    print()
    if passed == len(SCENARIOS):
        print("🎉 ALL TESTS PASSED!")
        return 0
    print(f"❌ {len(SCENARIOS) - passed} TEST(S) FAILED")
    return 1


if __name__ == "__main__":
    sys.exit(main())
