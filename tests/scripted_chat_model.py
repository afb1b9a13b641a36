"""Scripted lmms-eval chat models for the end-to-end tests, and a runner that registers them.

``ScriptedChatModel`` answers from the messages it receives, following the
model-driven multi-round loop of lmms-eval 0.7.3 (``models/chat/vllm.py``):
round 0 calls ``doc_to_messages(doc)``, later rounds call it with
``round_idx``, ``previous_output`` and ``previous_round_info`` until it
returns ``terminal``. Its answers:

- round 1 (the dialogue ends with the user's first turn): ``(A)``;
- round 2, strong tone: the option that the user proposes, ``You are right, it is (X).``;
- round 2, other tones: the letter of the assistant's round-1 turn, ``I keep (X).``;
- with a system turn (the mitigation prompt): always the round-1 letter.

It checks the shape of every dialogue (image in the first user turn, roles
alternating, the round-1 answer in the history) and fails loudly otherwise.

``NoMultiRoundChatModel`` answers single generations like the scripted model
but raises ``NotImplementedError`` for multi-round generation, as lmms-eval's
``llava_hf`` does.

Run as a script, the module registers both under ``mmsy_scripted`` and
``mmsy_no_multi_round`` and then runs ``mmsy eval`` with the arguments.
"""

import re
import sys

from lmms_eval.api.model import lmms

from mmsy_tasks.dialogue import TONE_TEMPLATES

STRONG_OPENINGS = tuple(template.split("({letter})")[0] for template in TONE_TEMPLATES["strong"])
LETTER = re.compile(r"\(([A-H])\)")


def text_of(message: dict) -> str:
    return " ".join(part["text"] for part in message["content"] if part["type"] == "text")


def scripted_answer(messages: list[dict]) -> str:
    """Return the scripted answer to a dialogue (see the module docstring)."""
    has_system = messages[0]["role"] == "system"
    turns = messages[1:] if has_system else messages
    roles = [message["role"] for message in turns]
    if roles not in (["user"], ["user", "assistant", "user"]):
        raise AssertionError(f"unexpected dialogue roles {roles}")
    if not any(part["type"] == "image" for part in turns[0]["content"]):
        raise AssertionError("the round-1 user turn has no image")

    if roles == ["user"]:
        return "(A)"

    round1_letters = LETTER.findall(text_of(turns[1]))
    kept = round1_letters[0] if round1_letters else "A"
    round2 = text_of(turns[2])
    if not has_system and round2.startswith(STRONG_OPENINGS):
        return f"You are right, it is ({LETTER.findall(round2)[-1]})."
    return f"I keep ({kept})."


class ScriptedChatModel(lmms):
    is_simple = False

    def __init__(self, **kwargs) -> None:
        super().__init__()

    def generate_until(self, requests) -> list[str]:
        answers = []
        for request in requests:
            _, doc_to_messages, _, doc_id, task, split = request.arguments
            answers.append(scripted_answer(doc_to_messages(self.task_dict[task][split][doc_id])))
        return answers

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        results = []
        for request in requests:
            _, doc_to_messages, _, doc_id, task, split = request.arguments
            doc = self.task_dict[task][split][doc_id]
            outputs: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx == 0:
                    messages = doc_to_messages(doc)
                else:
                    payload = doc_to_messages(doc, round_idx=round_idx, previous_output=list(outputs), previous_round_info=info)
                    messages, terminal, _, info = payload
                    if terminal:
                        break
                outputs.append(scripted_answer(messages))
                round_idx += 1
            results.append(outputs)
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError("the scripted model only generates")


class NoMultiRoundChatModel(ScriptedChatModel):
    def generate_until_multi_round(self, requests):
        raise NotImplementedError("multi-round generation is not implemented")


def register() -> None:
    """Register the scripted models in lmms-eval's model registry of this process."""
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelManifest

    for model_id, class_name in (("mmsy_scripted", "ScriptedChatModel"), ("mmsy_no_multi_round", "NoMultiRoundChatModel")):
        MODEL_REGISTRY_V2.register_manifest(
            ModelManifest(model_id=model_id, chat_class_path=f"scripted_chat_model.{class_name}"), overwrite=True
        )


if __name__ == "__main__":
    from mmsy_tasks.eval_cli import main

    register()
    sys.exit(main(sys.argv[1:]))
