"""Dataset builders behind ``mmsy build``: easy-VQA, TDIUC and VQA-format JSON.

Each source module reads its files into a ``BuildPlan`` (``plan_build``),
and the plan's ``iter_items`` yields ``records.Item`` objects. The
``writer`` module stores them as a dataset directory that lmms-eval loads
with ``load_from_disk``.
"""

# Stored in every manifest; bump it when a build of the same input would
# write different items.
BUILDER_VERSION = 1
