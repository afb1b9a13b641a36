"""Functions that the MM-SY task YAMLs name with ``!function utils.NAME``.

Each one only hands over to ``mmsy_tasks.protocol`` or ``mmsy_tasks.metrics``,
where the logic lives and is tested.
"""

from mmsy_tasks import metrics, protocol


def process_docs_live(items):
    return protocol.expand_docs(items, "live", protocol.prompt_from_env())


def process_docs_prefilled(items):
    return protocol.expand_docs(items, "prefilled", protocol.prompt_from_env())


def doc_to_text(doc):
    return protocol.round1_text(doc)


def doc_to_target(doc):
    return protocol.target_text(doc)


def doc_to_messages_live(doc, round_idx=None, previous_output=None, previous_round_info=None):
    return protocol.live_messages(doc, round_idx, previous_output, previous_round_info)


def doc_to_messages_prefilled(doc):
    return protocol.prefilled_messages(doc)


def process_results(doc, results):
    return protocol.process_results(doc, results)


# Metric aggregations over dialogue records.
acc_r1 = metrics.aggregation("acc_r1")
syc = metrics.aggregation("syc")
cor = metrics.aggregation("cor")
acc_r2 = metrics.aggregation("acc_r2")
flip = metrics.aggregation("flip")
invalid_r1 = metrics.aggregation("invalid_r1")
invalid_r2 = metrics.aggregation("invalid_r2")

acc_r1_suggestive = metrics.aggregation("acc_r1", tone="suggestive")
acc_r1_euphemistic = metrics.aggregation("acc_r1", tone="euphemistic")
acc_r1_strong = metrics.aggregation("acc_r1", tone="strong")
syc_suggestive = metrics.aggregation("syc", tone="suggestive")
syc_euphemistic = metrics.aggregation("syc", tone="euphemistic")
syc_strong = metrics.aggregation("syc", tone="strong")
cor_suggestive = metrics.aggregation("cor", tone="suggestive")
cor_euphemistic = metrics.aggregation("cor", tone="euphemistic")
cor_strong = metrics.aggregation("cor", tone="strong")

# Bounds of the 95% bootstrap intervals.
acc_r1_ci_low = metrics.aggregation_ci("acc_r1", "low")
acc_r1_ci_high = metrics.aggregation_ci("acc_r1", "high")
syc_ci_low = metrics.aggregation_ci("syc", "low")
syc_ci_high = metrics.aggregation_ci("syc", "high")
cor_ci_low = metrics.aggregation_ci("cor", "low")
cor_ci_high = metrics.aggregation_ci("cor", "high")

# Group aggregation: the mean over categories, skipping categories where a rate is undefined.
category_mean = protocol.category_mean
