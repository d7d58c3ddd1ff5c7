"""Server-rendered HTML pages for clinicians: the AGP report (agp_page.py) and the patient
list, through Jinja2 templates (templates/) with the security headers of pages.py."""
