"""What people read: terminal tables and JSON lines, progress lines, the HTML duplicate report."""
