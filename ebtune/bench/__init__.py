"""Speed measurements that need torch only (`python -m ebtune.bench`)."""
