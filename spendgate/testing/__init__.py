"""Test helpers shipped with spendgate: a fake upstream and a threaded server runner."""
