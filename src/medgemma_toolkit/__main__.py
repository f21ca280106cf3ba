from .cli import main

if __name__ == "__main__":  # `spawn` workers (scale/) import this module again: they must not run the CLI
    main()
