"""Call batchjob's progress helper once, as a job would."""

from batchjob import progress

progress("処理中: 第六竹石", current=3, total=120)
