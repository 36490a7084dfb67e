"""From results folders to tables, figures and reports. Reads only the files runs write."""
