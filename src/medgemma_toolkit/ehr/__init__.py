"""`medgemma ehr`: answer questions about one patient from FHIR R4 data (a server or a local export) with tools."""
