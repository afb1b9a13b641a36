"""``mmsy eval``: run lmms-eval with the MM-SY task folder included.

Every argument except ``--mitigation-prompt`` goes to lmms-eval unchanged,
and the MM-SY task folder is added to ``--include_path`` (next to any folder
given there)::

    mmsy eval --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf \\
        --tasks mmsy_easyvqa_prefilled --log_samples --output_path out/
    mmsy eval --mitigation-prompt --model mmsy_hf --model_args pretrained=... --tasks mmsy ...

lmms-eval runs in this process. Its ``cli_evaluate`` (0.7.3) logs an
evaluation error and returns normally, so this command records the error and
exits with status 1. For two known cases it also prints what to do next: a
model without multi-round generation asked to run a live task, and a missing
dataset.
"""

import os
import sys
from pathlib import Path

from mmsy_tasks import paths, protocol
from mmsy_tasks.task_data import DatasetNotFoundError, ensure_dataset_dir

MITIGATION_FLAG = "--mitigation-prompt"

USAGE = f"""usage: mmsy eval [{MITIGATION_FLAG}] LMMS_EVAL_ARGS...

Run lmms-eval with the MM-SY tasks included (--include_path is added for you).
Every argument but {MITIGATION_FLAG} goes to lmms-eval; see `lmms-eval eval --help`.

options:
  {MITIGATION_FLAG}   add the mitigation instruction as a system turn before round 1
                        (the same as setting {protocol.PROMPT_ENV}=mitigation)

MM-SY task groups:
  mmsy                    TDIUC, live protocol (needs a multi-round model such as mmsy_hf)
  mmsy_tdiuc_prefilled    TDIUC, prefilled protocol (any chat model)
  mmsy_easyvqa_live       easy-VQA, live protocol
  mmsy_easyvqa_prefilled  easy-VQA, prefilled protocol

example:
  mmsy eval --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf \\
      --tasks mmsy_easyvqa_prefilled --log_samples --output_path out/"""

LIVE_HINT = (
    "The live MM-SY tasks (mmsy, mmsy_easyvqa_live and their subtasks) need a model that implements "
    "lmms-eval's multi-round loop (generate_until_multi_round). Run the prefilled variant instead "
    "(--tasks mmsy_tdiuc_prefilled or mmsy_easyvqa_prefilled), which works with every chat model, "
    "or evaluate with the MM-SY adapter: --model mmsy_hf --model_args pretrained=CHECKPOINT."
)


def main(argv: list[str]) -> int:
    """Run lmms-eval with ``argv`` and the MM-SY task folder, and return the exit status."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0

    if MITIGATION_FLAG in argv:
        argv = [arg for arg in argv if arg != MITIGATION_FLAG]
        os.environ[protocol.PROMPT_ENV] = "mitigation"
    try:
        prompt = protocol.prompt_from_env()
    except ValueError as error:
        print(f"mmsy eval: {error}", file=sys.stderr)
        return 2

    missing = missing_dataset_error(_flag_value(argv, "--tasks"))
    if missing is not None:
        print(f"mmsy eval: {missing}", file=sys.stderr)
        return 1

    try:
        error = _run_lmms_eval(argv)
    except SystemExit as exit_request:
        # argparse errors and lmms-eval's listing options (--tasks list) exit this way.
        return _exit_status(exit_request.code)
    if error is not None:
        print(f"mmsy eval: {describe_failure(error)}", file=sys.stderr)
        return 1

    _report_outputs(argv, prompt)
    return 0


def _run_lmms_eval(argv: list[str]) -> BaseException | None:
    """Run lmms-eval's evaluation CLI in this process and return the evaluation error, if any."""
    import lmms_eval.__main__ as lmms_main

    # NOTE: cli_evaluate catches every error of an evaluation, prints it and
    # returns normally. cli_evaluate_single, which it calls by module global,
    # is the one place where a wrapper can record the error.
    errors: list[BaseException] = []
    evaluate_single = lmms_main.cli_evaluate_single

    def recording_evaluate_single(run_args):
        try:
            return evaluate_single(run_args)
        except Exception as error:
            errors.append(error)
            raise

    # lmms-eval parses sys.argv (again inside cli_evaluate), as its own entry point does.
    saved_argv = sys.argv
    sys.argv = ["lmms-eval", *argv]
    lmms_main.cli_evaluate_single = recording_evaluate_single
    try:
        _, args = lmms_main.parse_eval_args()
        args.include_path = include_paths(args.include_path)
        lmms_main.cli_evaluate(args)
    finally:
        lmms_main.cli_evaluate_single = evaluate_single
        sys.argv = saved_argv
    return errors[0] if errors else None


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def include_paths(user_paths: str | list[str] | None) -> str | list[str]:
    """Return lmms-eval's include path with the MM-SY task folder added."""
    folder = str(paths.task_folder())
    if not user_paths:
        return folder
    user_paths = [user_paths] if isinstance(user_paths, str) else list(user_paths)
    return user_paths if folder in user_paths else [*user_paths, folder]


def describe_failure(error: BaseException) -> str:
    """Return a message for an evaluation error, with what to do next for the known cases."""
    cause = root_cause(error)
    if isinstance(cause, protocol.LiveProtocolError):
        return str(cause)
    if isinstance(cause, NotImplementedError) and _raised_in(cause, "generate_until_multi_round"):
        return f"the model does not implement generate_until_multi_round ({cause}). {LIVE_HINT}"
    if isinstance(cause, DatasetNotFoundError):
        return str(cause)
    return f"evaluation failed: {type(cause).__name__}: {cause}"


def root_cause(error: BaseException) -> BaseException:
    """Return the exception behind ``error``, looking through tenacity retries and chained causes.

    lmms-eval retries ``process_results``, so an error raised there arrives
    wrapped in ``tenacity.RetryError``.
    """
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        last_attempt = getattr(error, "last_attempt", None)
        if last_attempt is not None and last_attempt.failed:
            error = last_attempt.exception()
        elif error.__cause__ is not None:
            error = error.__cause__
        else:
            break
    return error


def _raised_in(error: BaseException, function_name: str) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        if traceback.tb_frame.f_code.co_name == function_name:
            return True
        traceback = traceback.tb_next
    return False


def missing_dataset_error(tasks: str | None) -> str | None:
    """Return the error for a TDIUC task whose dataset is not built, before lmms-eval loads the model."""
    names = [name.strip() for name in (tasks or "").split(",")]
    if not any(name == "mmsy" or name.startswith("mmsy_tdiuc") for name in names):
        return None
    try:
        ensure_dataset_dir("tdiuc")
    except DatasetNotFoundError as error:
        return str(error)
    return None


def _report_outputs(argv: list[str], prompt: str) -> None:
    output_path = _flag_value(argv, "--output_path")
    where = f"under {Path(output_path).resolve()}" if output_path else "nowhere (pass --output_path to keep them)"
    print(f"mmsy eval: prompt variant {prompt!r}; results written {where}")


def _flag_value(argv: list[str], flag: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
