"""Command line: `tdm-alerts run | notify | status | interpret | rules | dlq | forget | ack |
cds-hooks | alert-schema`.

Exit codes: 0 success; 1 some input could not be interpreted (`interpret`) or a fatal
service error; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from consumer.cli.ack import add_ack
from consumer.cli.cds_hooks import add_cds_hooks
from consumer.cli.dlq import add_dlq
from consumer.cli.interpret import add_interpret
from consumer.cli.rules import add_rules
from consumer.cli.service import VERSION, add_service_commands
from consumer.clients.seam import ClientError
from consumer.fatal import FatalError
from consumer.settings import describe_decode_error, describe_settings_error
from interpretation import Alert, RuleSetError


def cmd_alert_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Alert.model_json_schema(mode="serialization"), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdm-alerts", description="Infliximab TDM alerting on a Kafka lab-result feed."
    )
    parser.add_argument("--version", action="version", version=f"tdm-alerts {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_service_commands(commands)
    add_interpret(commands)
    add_rules(commands)
    add_dlq(commands)
    add_ack(commands)
    add_cds_hooks(commands)
    schema = commands.add_parser("alert-schema", help="print the JSON schema of published alerts")
    schema.set_defaults(handler=cmd_alert_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RuleSetError as err:
        print(f"tdm-alerts: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"tdm-alerts: invalid configuration:\n{describe_settings_error(err)}", file=sys.stderr)
        return 2
    except SettingsError as err:  # a value pydantic-settings itself could not decode
        print(f"tdm-alerts: invalid configuration:\n{describe_decode_error(err)}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"tdm-alerts: {err.filename}: no such file", file=sys.stderr)
        return 2
    except FatalError as err:  # operator commands: a clear line, no traceback
        print(f"tdm-alerts: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader stopped reading (`interpret ... | head`): what it did not take is not an
        # error to report. Later writes, Python's own flush at exit included, go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ClientError as err:  # one the command could not name more closely
        print(f"tdm-alerts: Kafka refused ({err.failure.value}): {err.name}{_OPERATOR_HINT}", file=sys.stderr)
        return 1


_OPERATOR_HINT = "; README 'Operator access' lists the ACLs each command needs"
