"""The lmms-eval task class of the MM-SY subtasks.

lmms-eval's ``ConfigurableTask`` reads ``dataset_path`` as a fixed hub id or
directory. The MM-SY tasks read a directory that depends on the machine
(``$MMSY_HOME/data/SOURCE``), so their YAMLs name this class (``class:``),
whose ``download`` resolves the directory at run time. In a task YAML:

- ``dataset_path`` is the MM-SY source (``easyvqa`` or ``tdiuc``). After
  loading, it contains the resolved directory, so the results JSON records it.
- ``dataset_name`` is the task category whose items the subtask asks.
- ``process_docs`` expands the items into the dialogues of a protocol.
"""

import datasets
from lmms_eval.api.task import ConfigurableMessagesTask

from mmsy_tasks import task_data


class MMSYTask(ConfigurableMessagesTask):
    """An MM-SY subtask: one source, one category, one protocol."""

    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config=None, model_name=None):
        # lmms-eval passes the whole YAML, whose ``class`` key is not a TaskConfig field.
        config = {key: value for key, value in (config or {}).items() if key != "class"}
        super().__init__(data_dir, cache_dir, download_mode, config, model_name)

    def download(self, dataset_kwargs=None) -> None:
        source = self.config.dataset_path
        split = self.config.test_split
        items = task_data.load_items(source, self.config.dataset_name, split)

        directory = str(task_data.dataset_dir(source))
        self.config.dataset_path = directory
        self.DATASET_PATH = directory

        docs = self.config.process_docs(items) if self.config.process_docs is not None else items
        self.dataset = datasets.DatasetDict({split: docs})
        self.dataset_no_image = datasets.DatasetDict({split: docs.remove_columns("image")})
